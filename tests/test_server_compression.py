"""permessage-deflate end to end: negotiated in the handshake, with the ``websockets`` library
(a browser-style client: it offers compression by default) and with raw sockets that look at
the bytes: RSV1 per message, one compressed frame per broadcast, bombs refused with 1009."""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib

import pytest
import trio
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.sync.client import connect

from wsnursery.codec import Encoding
from wsnursery.config import ConfigError, load
from wsnursery.wire import CloseCode, Opcode

from .wsclient import masked_frame

TIMEOUT = 10
BIG = {"text": "lorem ipsum dolor sit amet " * 40}  # ~1 KiB of JSON, compresses well

pytestmark = pytest.mark.usefixtures("server_errors")


def _open(url: str, **options: object):
    return connect(url, open_timeout=TIMEOUT, close_timeout=TIMEOUT, **options)  # type: ignore[arg-type]


def _deflate(ws) -> PerMessageDeflate | None:
    found = [ext for ext in ws.protocol.extensions if isinstance(ext, PerMessageDeflate)]
    return found[0] if found else None


def _websockets_round_trip(url: str, echo_url: str) -> dict:
    with _open(url) as sub, _open(url) as pub, _open(echo_url) as echo:
        extensions = [_deflate(ws) for ws in (sub, pub, echo)]
        sub.recv(timeout=TIMEOUT)
        pub.recv(timeout=TIMEOUT)
        sub.send(json.dumps({"type": "subscribe", "id": 1, "channel": "zip"}))
        subscribed = json.loads(sub.recv(timeout=TIMEOUT))
        for i, data in enumerate([BIG, "small", BIG]):
            pub.send(json.dumps({"type": "publish", "id": 10 + i, "channel": "zip", "data": data}))
            assert json.loads(pub.recv(timeout=TIMEOUT))["type"] == "published"
        messages = [json.loads(sub.recv(timeout=TIMEOUT)) for _ in range(3)]
        echoed = []
        for payload in ["x" * 5000, "tiny", b"\x00\x01" * 3000, b"", ""]:
            echo.send(payload)
            echoed.append((payload, echo.recv(timeout=TIMEOUT)))
        return {"extensions": extensions, "subscribed": subscribed, "messages": messages, "echoed": echoed}


async def test_websockets_client_negotiates_compression_and_round_trips(server):
    result = await trio.to_thread.run_sync(_websockets_round_trip, server.url, server.echo_url)
    for extension in result["extensions"]:
        assert extension is not None, "permessage-deflate was not negotiated"
        assert extension.remote_no_context_takeover  # the server compresses each message afresh
    assert result["subscribed"]["type"] == "subscribed"
    assert [m["data"] for m in result["messages"]] == [BIG, "small", BIG]
    for sent, received in result["echoed"]:
        assert received == sent and type(received) is type(sent)
    # The big messages were compressed once, for every subscriber with the default window.
    assert len(server.server.context.frames.table(Encoding.JSON, 15)) == 3


def _negotiated(url: str, **options: object) -> PerMessageDeflate | None:
    with _open(url, **options) as ws:
        ws.recv(timeout=TIMEOUT)
        return _deflate(ws)


async def test_no_compression_when_not_offered_or_turned_off(start_server):
    on = await start_server()
    assert await trio.to_thread.run_sync(lambda: _negotiated(on.url, compression=None)) is None
    off = await start_server(compression="off")
    assert await trio.to_thread.run_sync(_negotiated, off.url) is None


# -- raw sockets: the bytes on the wire ------------------------------------------------


class Raw:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.head = b""

    @classmethod
    async def connect(cls, port: int, extensions: str | None, path: str = "/") -> Raw:
        raw = cls(await trio.open_tcp_stream("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        head = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
        if extensions is not None:
            head += f"Sec-WebSocket-Extensions: {extensions}\r\n"
        await raw.stream.send_all((head + "\r\n").encode())
        await raw._fill(lambda: b"\r\n\r\n" in raw.buffer)
        end = raw.buffer.index(b"\r\n\r\n") + 4
        raw.head, raw.buffer = bytes(raw.buffer[:end]), raw.buffer[end:]
        assert raw.head.startswith(b"HTTP/1.1 101"), raw.head
        return raw

    def header(self, name: str) -> str | None:
        for line in self.head.decode().split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    async def _fill(self, done) -> None:
        with trio.fail_after(TIMEOUT):
            while not done():
                data = await self.stream.receive_some(65536)
                assert data, "the server closed the connection"
                self.buffer += data

    async def frame(self) -> tuple[int, bytes]:
        """The next whole frame: (its first byte, its payload)."""
        await self._fill(lambda: len(self.buffer) >= 2)
        length, offset = self.buffer[1] & 0x7F, 2
        if length == 126:
            await self._fill(lambda: len(self.buffer) >= 4)
            (length,), offset = struct.unpack("!H", self.buffer[2:4]), 4
        elif length == 127:
            await self._fill(lambda: len(self.buffer) >= 10)
            (length,), offset = struct.unpack("!Q", self.buffer[2:10]), 10
        await self._fill(lambda: len(self.buffer) >= offset + length)
        first, payload = self.buffer[0], bytes(self.buffer[offset : offset + length])
        del self.buffer[: offset + length]
        return first, payload

    async def send(self, data: bytes, rsv: int = 0, opcode: int = Opcode.TEXT) -> None:
        await self.stream.send_all(masked_frame(opcode, data, rsv=rsv))


def inflate(payload: bytes, bits: int = 15) -> bytes:
    return zlib.decompressobj(-bits).decompress(payload + b"\x00\x00\xff\xff")


def client_compress(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


async def test_every_compressing_subscriber_gets_the_same_compressed_frame(start_server):
    running = await start_server(compression_client_window_bits=10, compression_client_context="on")
    limited = await Raw.connect(running.port, "permessage-deflate; client_max_window_bits")
    assert limited.header("Sec-WebSocket-Extensions") == (
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"
    )
    subscribers = [limited] + [await Raw.connect(running.port, "permessage-deflate") for _ in range(2)]
    plain = await Raw.connect(running.port, None)
    assert plain.header("Sec-WebSocket-Extensions") is None
    for index, raw in enumerate([*subscribers, plain]):
        assert (await raw.frame())[0] == 0x81  # the welcome: small, sent plain
        await raw.send(json.dumps({"type": "subscribe", "id": index, "channel": "zip"}).encode())
        first, _ = await raw.frame()
        assert first == 0x81  # the subscribed reply is under the threshold: plain
    publish = {"type": "publish", "id": 99, "channel": "zip", "data": BIG}
    await subscribers[0].send(client_compress(json.dumps(publish).encode()), rsv=0x40)  # a compressed publish
    frames = []
    for raw in subscribers:
        while True:
            first, payload = await raw.frame()
            if first & 0x40 or json.loads(payload)["type"] == "message":
                break
        frames.append((first, payload))
    assert all(frame == frames[0] for frame in frames), "subscribers got different bytes"
    first, payload = frames[0]
    assert first == 0xC1  # FIN, RSV1, text
    message = json.loads(inflate(payload))
    assert (message["type"], message["data"]) == ("message", BIG)
    plain_first, plain_payload = await plain.frame()
    assert plain_first == 0x81 and json.loads(plain_payload) == message
    assert len(payload) * 4 < len(plain_payload)


async def test_rsv1_is_refused_without_the_extension(start_server):
    running = await start_server()
    raw = await Raw.connect(running.port, None, path="/echo")
    await raw.send(client_compress(b"hello"), rsv=0x40)
    first, payload = await raw.frame()
    assert first == 0x88 and struct.unpack("!H", payload[:2])[0] == CloseCode.PROTOCOL_ERROR


async def test_a_decompression_bomb_is_closed_with_1009(start_server):
    running = await start_server(max_message_size=65536)
    raw = await Raw.connect(running.port, "permessage-deflate", path="/echo")
    bomb = client_compress(bytes(32 * 2**20))  # 32 MiB of zeros, ~32 KiB compressed
    assert len(bomb) < 65536
    await raw.send(bomb, rsv=0x40, opcode=Opcode.BINARY)
    first, payload = await raw.frame()
    assert first == 0x88 and struct.unpack("!H", payload[:2])[0] == CloseCode.TOO_BIG


async def test_echo_compresses_over_the_threshold_and_not_under(start_server):
    running = await start_server(compression_threshold=100)
    raw = await Raw.connect(running.port, "permessage-deflate; client_no_context_takeover", path="/echo")
    assert raw.header("Sec-WebSocket-Extensions") == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )
    for text in (b"a" * 99, b"b" * 100):
        await raw.send(client_compress(text), rsv=0x40)
    assert await raw.frame() == (0x81, b"a" * 99)
    first, payload = await raw.frame()
    assert first == 0xC1 and inflate(payload) == b"b" * 100


async def test_clients_are_asked_not_to_keep_context_unless_allowed(start_server):
    """By default the 101 adds client_no_context_takeover: no connection holds an inflater
    between messages. With compression_client_context=on, a client may refer back to its
    earlier messages, and the server reads them with the inflater it keeps."""
    default = await start_server()
    raw = await Raw.connect(default.port, "permessage-deflate", path="/echo")
    assert raw.header("Sec-WebSocket-Extensions") == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )
    allowed = await start_server(compression_client_context="on", compression_threshold=10_000)
    raw = await Raw.connect(allowed.port, "permessage-deflate", path="/echo")
    assert raw.header("Sec-WebSocket-Extensions") == "permessage-deflate; server_no_context_takeover"
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    text = b"the same sentence, twice over " * 4
    first = (compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    second = (compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert len(second) < len(first) // 4  # it refers back to the first message
    await raw.send(first, rsv=0x40)
    await raw.send(second, rsv=0x40)
    assert await raw.frame() == (0x81, text)
    assert await raw.frame() == (0x81, text)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ({"compression": "maybe"}, ["compression", "on, off"]),
        ({"compression_threshold": "-1"}, ["compression_threshold", "0 to"]),
        ({"compression_client_window_bits": "16"}, ["compression_client_window_bits", "8 to 15"]),
        ({"compression_level": "0"}, ["compression_level", "1 to 9"]),
        ({"compression_client_context": "yes"}, ["compression_client_context", "on, off"]),
    ],
)
def test_bad_compression_settings_are_one_line(flags, words):
    with pytest.raises(ConfigError) as caught:
        load(flags=flags, environ={})
    assert "\n" not in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_compression_settings_from_flags_and_environment():
    config = load(flags={"compression_threshold": "1024"}, environ={"WSNURSERY_COMPRESSION": "off"})
    assert (config.compression, config.compression_threshold) == ("off", 1024)
    assert load(flags={}, environ={}).compression == "on"


# -- the project's own SDK (wsproto's PerMessageDeflate underneath) ------------------------


@pytest.mark.parametrize("encoding", ["json", "cbor"])
async def test_the_sdk_negotiates_compression_and_round_trips(start_server, encoding):
    import wsnursery.client as wc

    running = await start_server(compression_threshold=64)
    big = {"rows": [{"id": i, "name": f"row {i}", "ok": True} for i in range(60)]}
    with trio.fail_after(TIMEOUT):
        async with wc.connect(running.url, encoding=encoding) as client:
            async with client.subscribe("sdk.zip") as messages:
                first = await client.publish("sdk.zip", big)
                await client.publish("sdk.zip", "small")
                received = []
                async for message in messages:
                    received.append(message)
                    if len(received) == 2:
                        break
            assert client._conn is not None and client._conn.transport.compressed
            assert [c.outbox.window_bits for c in running.server.connections] == [15]
    assert [m.data for m in received] == [big, "small"]
    assert received[0].seq == first.seq
    # The big message went out compressed (once), from the compressed table of its encoding.
    assert len(running.server.context.frames.table(Encoding(f"wsnursery.v1.{encoding}"), 15)) == 2
