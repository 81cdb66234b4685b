"""The server API's cluster-wide answers on the Redis engine: history, channels, disconnect.

With ``--engine redis://`` these answer from Redis, for every node of the cluster (the memory
engine answers from the process's windows, in ``server_api``):

- ``history``: ``XRANGE`` on the channel's stream from ``since``, skipping presence entries,
  at most ``limit`` messages (the stream holds at most ``history_size + PRESENCE_ENTRIES``
  entries, so the pages read are bounded by that too), in the epoch and up to the head its meta hash held
  when the call began.
- ``channels``: the channels with a meta hash (``<prefix>{<channel>}:m``: epoch and seq) under
  the prefix, found with ``SCAN`` (at most ``SCAN_CALLS`` calls of ``SCAN_COUNT``, and at most
  ``MAX_CHANNELS_LISTED`` channels, sorted by name). ``subscribers`` is the number of
  subscribers on every node as presence holds them (listed and past ``max_presence_members``),
  which for a node killed a moment ago still counts its subscribers until it is reaped
  (``redis_presence``: ``node_ttl`` and one refresh period).
- ``disconnect``: an entry on ``<prefix>ctl`` (the control stream every node's reader
  watches, at most about ``CONTROL_MAXLEN`` entries), so every other node closes the user's
  connections with 4003 as soon as its reader sees it (one Redis round trip), and answers
  with its count on a reply stream of the request's own (``<prefix>ctl:r:<random>``, expiring
  after a minute). The asking node closes its own, then waits for the nodes that were alive
  when it asked (their liveness key exists), at most ``DISCONNECT_WAIT`` seconds: the count it
  returns is its own plus what they answered by then. A node that answers later still closes the connections,
  uncounted (logged).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

import trio
from coredis.tokens import PureToken

from . import logs
from .api import ChannelInfo, History, HistoryMessage
from .redis_store import Entry, RedisStore, _text, parse

MAX_CHANNELS_LISTED = 1000
SCAN_CALLS = 100
SCAN_COUNT = 1000
CONTROL_MAXLEN = 1000
CONTROL_TTL_MS = 86_400_000
DISCONNECT_WAIT = 2.0

log = logs.get("redis")

# ARGV: the prefix, then channel names. For each: epoch, seq, subscribers (listed + not).
INFO = """
local out = {}
for i = 2, #ARGV do
  local base = ARGV[1] .. '{' .. ARGV[i] .. '}'
  local state = redis.call('HMGET', base .. ':m', 'epoch', 'seq')
  out[#out + 1] = state[1] or ''
  out[#out + 1] = tonumber(state[2] or '0')
  out[#out + 1] = redis.call('HLEN', base .. ':p') + redis.call('HLEN', base .. ':pu')
end
return out
"""


async def history(store: RedisStore, channel: str, since: int | None, limit: int) -> History:
    position = await store.position(channel)
    if position is None:
        return History(None, 0, [])
    key = store.stream_key(channel)
    messages: list[HistoryMessage] = []
    start = f"{(since or 0) + 1}-0"
    while len(messages) < limit:
        want = limit - len(messages)

        async def read(start: str = start, want: int = want) -> Any:
            return await store.client.xrange(key, start, "+", count=want)

        page = await store.guard(read)
        for item in page:
            entry = parse(item.identifier, item.field_values)
            if isinstance(entry, Entry) and entry.epoch == position.epoch and entry.seq <= position.seq:
                messages.append(HistoryMessage(entry.seq, entry.data, entry.ts))
        if len(page) < want:
            break
        start = "(" + _text(page[-1].identifier)  # exclusive: the next page
    return History(position.epoch, position.seq, messages)


async def channels(store: RedisStore) -> list[ChannelInfo]:
    prefix = store.prefix
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "{*}:m"
    names: set[str] = set()
    cursor = 0
    for _ in range(SCAN_CALLS):

        async def scan(cursor: int = cursor) -> Any:
            return await store.client.scan(cursor, match=pattern, count=SCAN_COUNT)

        cursor, keys = await store.guard(scan)
        names.update(_text(key)[len(prefix) + 1 : -3] for key in keys)
        if not cursor or len(names) >= MAX_CHANNELS_LISTED:
            break
    listed = sorted(names)[:MAX_CHANNELS_LISTED]
    if not listed:
        return []
    script = store.client.register_script(INFO)

    async def info() -> Any:
        return await script([], [prefix, *listed])

    raw = await store.guard(info)
    infos = []
    for name, epoch, seq, subscribers in zip(listed, raw[::3], raw[1::3], raw[2::3]):
        if epoch:  # gone between the scan and the script
            infos.append(ChannelInfo(name, _text(epoch), int(seq), int(subscribers)))
    return infos


async def disconnect(
    store: RedisStore, node: str, user: str, here: Callable[[], int], wait: float = DISCONNECT_WAIT
) -> int:
    """Ask every other node to close ``user``'s connections, then close this node's (``here``,
    once the request is in Redis: unavailable closes nothing); the total closed."""
    replies = f"{store.control_key}:r:{secrets.token_hex(8)}"

    async def ask() -> Any:
        client = store.client
        others = {_text(n) for n in await client.smembers(f"{store.prefix}nodes")} - {node}
        alive = {n for n in others if await client.exists([f"{store.prefix}node:{n}"])}
        await client.xadd(
            store.control_key,
            {"k": "disconnect", "u": user, "o": node, "r": replies},
            trim_strategy=PureToken.MAXLEN,
            threshold=CONTROL_MAXLEN,
            trim_operator=PureToken.APPROXIMATELY,
        )
        await client.pexpire(store.control_key, CONTROL_TTL_MS)
        return alive

    waiting: set[str] = await store.guard(ask)
    count, last = here(), "0-0"
    deadline = trio.current_time() + wait
    while waiting and (left := deadline - trio.current_time()) > 0:

        async def read(last: str = last, left: float = left) -> Any:
            return await store.client.xread({replies: last}, count=100, block=max(1, int(left * 1000)))

        for entry in (await store.guard(read, left + store.timeout) or {}).get(replies.encode(), ()):
            last = _text(entry.identifier)
            answered = _text(entry.field_values[b"n"])
            if answered in waiting:
                waiting.discard(answered)
                count += int(entry.field_values[b"c"])
    if waiting:
        log.warning("disconnect %s: %d nodes did not answer within %.1fs (not counted)", user, len(waiting), wait)
    return count
