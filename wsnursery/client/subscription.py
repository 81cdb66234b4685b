"""A subscription as the application sees it: a bounded anyio memory object stream.

The client's reader hands items over without blocking (:meth:`Subscription._hand_over`);
what does not fit waits in a small overflow (at most one frame's worth of deliveries) and the
reader then waits in :meth:`Subscription._drain` before reading the next frame. That wait is
the backpressure: see :mod:`wsnursery.client.sdk`.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Self

import anyio

from ..protocol import Position
from .errors import Closed
from .receiver import Gap, Message

if TYPE_CHECKING:
    from .sdk import Client

__all__ = ["Subscription", "SubscriptionState"]


class SubscriptionState(enum.Enum):
    NEW = "new"  # made, not entered
    ACTIVE = "active"  # entered: subscribed (or subscribing)
    CLOSED = "closed"  # left, refused, or the client ended


class _SubscriptionClosed(Closed):
    """Raised by ``receive`` on a closed subscription (``async for`` just ends)."""


def _position(since: Position | tuple[str, int] | None) -> Position | None:
    if since is None or isinstance(since, Position):
        return since
    epoch, seq = since
    if not isinstance(epoch, str) or type(seq) is not int or seq < 0:
        raise ValueError("since must be (epoch: str, seq: int >= 0)")
    return Position(epoch, seq)


class Subscription:
    """A subscription to one channel: ``async with client.subscribe(channel) as messages``.

    Iterating yields, strictly in ``seq`` order and never twice:

    - :class:`Message` (``channel``, ``epoch``, ``seq``, ``data``, ``ts``) for each message;
    - :class:`Gap` (``channel``, ``expected_seq``, ``resumed_at_seq``, ``reason``) right before
      the first message after a loss the server could not repair: ``reason`` is
      ``"history_exceeded"`` (the server no longer held them) or ``"epoch_changed"`` (the
      stream was replaced, e.g. the hub restarted). Loss is always reported, never silent.

    Entering sends ``subscribe`` and returns once the server confirmed it (messages
    published after that are delivered). Leaving unsubscribes and drops what was not read.
    Iteration ends (``StopAsyncIteration``) once the subscription is closed; it raises
    ``GaveUp``, ``ConnectionClosed``, ``Forbidden`` or ``Closed`` when the client ends, after
    the messages already buffered, and ``ServerError`` when the server refused a (re)subscribe.

    ``data`` is as published; bytes come back as bytes whichever encodings the publisher and
    the subscriber use (a map of exactly the form ``{"$bytes": <base64>}`` is read as bytes).

    Backpressure: items wait for the application in a memory object stream of
    ``buffer_size``; past it (plus at most one frame's worth of deliveries, e.g. a replay
    filling a hole) the client stops reading the socket until the application catches up.
    """

    def __init__(
        self, client: Client, channel: str, ack: bool, buffer_size: int,
        since: Position | tuple[str, int] | None = None,
    ) -> None:
        if not isinstance(channel, str):
            raise TypeError("channel must be a string")
        self.since = _position(since)
        self.client = client
        self.channel = channel
        self.ack = ack
        self.buffer_size = buffer_size
        self.state = SubscriptionState.NEW
        self._send, self._receive = anyio.create_memory_object_stream[Message | Gap](buffer_size)
        # Items handed over while the stream was full; the reader waits until they fit.
        self._overflow: deque[Message | Gap] = deque()
        self._last: Message | Gap | None = None
        self._confirmed = anyio.Event()  # the first subscribed reply (or an error)
        self._error: BaseException | None = None

    # -- the application side --------------------------------------------------------

    @property
    def position(self) -> Position | None:
        """``(epoch, seq)`` of the last message handed to this subscription (a ``Position``)."""
        return self.client.session.position(self.channel)

    @property
    def closed(self) -> bool:
        return self.state is SubscriptionState.CLOSED

    def __len__(self) -> int:
        """Items waiting for the application."""
        return self._receive.statistics().current_buffer_used + len(self._overflow)

    async def __aenter__(self) -> Self:
        if self.state is not SubscriptionState.NEW:
            raise RuntimeError("a Subscription can be entered only once")
        self.client._add_subscription(self)
        self.state = SubscriptionState.ACTIVE
        try:
            await self._confirmed.wait()
            if self._error is not None:
                raise self._error
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop delivering and unsubscribe (the unsubscribe is sent in the background)."""
        if self.state is SubscriptionState.CLOSED:
            return
        was_active = self.state is SubscriptionState.ACTIVE
        self.state = SubscriptionState.CLOSED
        if was_active:
            self.client._remove_subscription(self)
        self._overflow.clear()
        self._receive.close()  # a reader waiting to hand over gets BrokenResourceError

    def __aiter__(self) -> AsyncIterator[Message | Gap]:
        return self

    async def __anext__(self) -> Message | Gap:
        try:
            return await self.receive()
        except _SubscriptionClosed:
            raise StopAsyncIteration from None

    async def receive(self) -> Message | Gap:
        """The next :class:`Message` or :class:`Gap`; ``Closed`` once the subscription is."""
        if self.state is SubscriptionState.NEW:
            raise RuntimeError("enter the subscription (async with) before reading it")
        while True:
            try:
                item = await self._receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                if self._error is not None:
                    raise self._error from None
                raise _SubscriptionClosed(f"the subscription to {self.channel} is closed") from None
            # A hand-over cancelled after the item was taken (asyncio can do that) is made
            # again by the next reader: the same object, right behind the first. Skip it.
            if item is not self._last:
                self._last = item
                return item

    # -- the client side ---------------------------------------------------------------

    def _hand_over(self, item: Message | Gap) -> None:
        if self._overflow:
            self._overflow.append(item)
            return
        try:
            self._send.send_nowait(item)
        except anyio.WouldBlock:
            self._overflow.append(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the application closed the subscription: nobody to deliver to

    async def _drain(self) -> None:
        """Wait until every overflowing item is in the stream (the reader's backpressure)."""
        while self._overflow:
            try:
                await self._send.send(self._overflow[0])
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._overflow.clear()
                return
            self._overflow.popleft()

    def _confirm(self) -> None:
        self._confirmed.set()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._confirmed.set()
        for item in self._overflow:  # what fits still reaches the application, then the error
            try:
                self._send.send_nowait(item)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                break
        self._overflow.clear()
        self._send.close()
