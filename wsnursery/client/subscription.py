"""A subscription as the application sees it: a bounded anyio memory object stream.

The client's reader hands items to the subscription's :class:`Inbox` without blocking; what
does not fit waits in a small overflow (at most one frame's worth of deliveries) and the
reader then waits in :meth:`Inbox.drain` before reading the next frame. That wait is the
backpressure: see :mod:`wsnursery.client.sdk`.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Self

import anyio

from ..protocol import Position
from .errors import Closed
from .receiver import Gap, Message

if TYPE_CHECKING:
    from .sdk import Client

__all__ = ["Inbox", "Subscription", "SubscriptionState"]


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


class Inbox:
    """The client's end of one subscription: where the reader hands messages over.

    A bounded anyio memory object stream of ``buffer_size`` items; what does not fit waits
    in :attr:`overflow` (one frame's worth of deliveries at most: the reader hands over one
    frame's effects, then :meth:`drain` waits for room before it reads another frame).
    """

    def __init__(self, buffer_size: int) -> None:
        self.send_stream, self.receive_stream = anyio.create_memory_object_stream[Message | Gap](buffer_size)
        self.overflow: deque[Message | Gap] = deque()
        self.confirmed = anyio.Event()  # the first subscribed reply (or an error)
        self.error: BaseException | None = None

    def __len__(self) -> int:
        return self.receive_stream.statistics().current_buffer_used + len(self.overflow)

    def hand_over(self, item: Message | Gap) -> None:
        """Queue ``item`` for the application without blocking (in order, after any overflow)."""
        if self.overflow:
            self.overflow.append(item)
            return
        try:
            self.send_stream.send_nowait(item)
        except anyio.WouldBlock:
            self.overflow.append(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the application closed the subscription: nobody to deliver to

    async def drain(self) -> None:
        """Wait until every overflowing item is in the stream (the reader's backpressure).

        A cancelled send may have delivered its item anyway (asyncio can do that): the item
        stays first in the overflow and is sent again by the next reader, as the same object,
        right behind the first; :meth:`Subscription.receive` skips it.
        """
        while self.overflow:
            try:
                await self.send_stream.send(self.overflow[0])
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.overflow.clear()
                return
            self.overflow.popleft()

    def confirm(self) -> None:
        self.confirmed.set()

    def fail(self, error: BaseException) -> None:
        """No more items: the application reads what is buffered, then gets ``error``."""
        if self.error is None:
            self.error = error
        self.confirmed.set()
        for item in self.overflow:  # what fits still reaches the application
            try:
                self.send_stream.send_nowait(item)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                break
        self.overflow.clear()
        self.send_stream.close()

    def close(self) -> None:
        """The application is done: drop what it did not read; a waiting reader is released."""
        self.overflow.clear()
        self.receive_stream.close()


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
        self,
        client: Client,
        channel: str,
        ack: bool,
        buffer_size: int,
        since: Position | tuple[str, int] | None = None,
        *,
        attach: Callable[[Subscription], None],
        detach: Callable[[Subscription], None],
    ) -> None:
        if not isinstance(channel, str):
            raise TypeError("channel must be a string")
        self.since = _position(since)
        self.client = client
        self.channel = channel
        self.ack = ack
        self.buffer_size = buffer_size
        self.state = SubscriptionState.NEW
        self.inbox = Inbox(buffer_size)
        self._attach, self._detach = attach, detach
        self._last: Message | Gap | None = None

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
        return len(self.inbox)

    async def __aenter__(self) -> Self:
        if self.state is not SubscriptionState.NEW:
            raise RuntimeError("a Subscription can be entered only once")
        self._attach(self)
        self.state = SubscriptionState.ACTIVE
        try:
            await self.inbox.confirmed.wait()
            if self.inbox.error is not None:
                raise self.inbox.error
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
            self._detach(self)
        self.inbox.close()  # a reader waiting to hand over gets BrokenResourceError

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
                item = await self.inbox.receive_stream.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                if self.inbox.error is not None:
                    raise self.inbox.error from None
                raise _SubscriptionClosed(f"the subscription to {self.channel} is closed") from None
            # A repeated hand-over (see Inbox.drain) is the same object right behind. Skip it.
            if item is not self._last:
                self._last = item
                return item
