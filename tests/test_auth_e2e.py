"""Issue 13 end to end: tokens, permissions, expiry and refresh, presence, the server API, TLS."""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
import trio_websocket

from wsnursery.api_client import ApiCallError, ApiClient, AsyncApiClient

from .auth_keys import SECRET, claims, mint, self_signed
from .helpers import http_request, wait_until
from .test_tokens import BAD_HS256
from .wsclient import TIMEOUT, Client, connect

API_KEY = "api-key-for-the-tests"
CHAT = {"subscribe": ["chat.*"], "publish": ["chat.*"]}

pytestmark = pytest.mark.usefixtures("server_errors")


def token(sub: str = "alice", ttl: float = 300, channels: Any = CHAT, **more: Any) -> str:
    return mint(claims(sub, ttl, channels=channels, **more))


@contextlib.asynccontextmanager
async def ws(
    url: str,
    jwt: str | None = None,
    *,
    query: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> AsyncIterator[Client]:
    extra = list(headers or [])
    if jwt is not None and not query:
        extra.append(("Authorization", f"Bearer {jwt}"))
    if jwt is not None and query:
        url += f"?token={jwt}"
    async with connect(url, headers=extra, ssl_context=ssl_context) as client:
        yield client


async def upgrade(port: int, path: str = "/", **headers: str) -> tuple[int, bytes]:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n")
            data = bytearray()
            while b"\r\n\r\n" not in data and (chunk := await stream.receive_some(65536)):
                data += chunk
            status = int(data.split(b" ", 2)[1])
            if status != 101:  # a refusal: the body, until the server closes
                while chunk := await stream.receive_some(65536):
                    data += chunk
    return status, bytes(data.partition(b"\r\n\r\n")[2])


async def closed_with(client: Client) -> int | None:
    """Read until the server closes; the close code."""
    with trio.fail_after(TIMEOUT):
        try:
            while True:
                await client.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            return exc.reason.code


async def next_of(client: Client, *kinds: str) -> dict[str, Any]:
    while True:
        frame = await client.receive()
        if frame["type"] in kinds:
            return frame


# -- tokens -------------------------------------------------------------------------------


async def test_no_token_is_401_and_a_good_one_connects(start_server: Any) -> None:
    running = await start_server(jwt_secret=SECRET)
    status, body = await upgrade(running.port)
    assert status == 401 and b"token is required" in body
    async with ws(running.url, token()) as client:
        assert (await client.subscribe("chat.x"))["channel"] == "chat.x"
    async with ws(running.url, token(), query=True) as client:  # browsers: the query parameter
        assert (await client.subscribe("chat.y"))["channel"] == "chat.y"


@pytest.mark.parametrize("case", sorted(BAD_HS256))
async def test_each_bad_token_is_401(start_server: Any, case: str, caplog: pytest.LogCaptureFixture) -> None:
    running = await start_server(jwt_secret=SECRET)
    bad = BAD_HS256[case]()
    status, body = await upgrade(running.port, authorization=f"Bearer {bad}")
    assert status == 401, (case, body)
    assert body.count(b"\n") == 1 and SECRET.encode() not in body
    if bad and len(bad) < 8000:
        status, _ = await upgrade(running.port, f"/?token={bad}")
        assert status == 401
    assert all(bad not in record.getMessage() for record in caplog.records if bad)


async def test_echo_needs_a_token_unless_echo_open(start_server: Any) -> None:
    running = await start_server(jwt_secret=SECRET)
    assert (await upgrade(running.port, "/echo"))[0] == 401
    running = await start_server(jwt_secret=SECRET, echo_open=True)
    assert (await upgrade(running.port, "/echo"))[0] == 101


# -- permissions --------------------------------------------------------------------------


async def test_a_chat_grant_subscribes_to_chat_x_and_is_forbidden_on_jobs(start_server: Any) -> None:
    running = await start_server(jwt_secret=SECRET, max_errors=3)
    grant = {"subscribe": ["chat.*"], "publish": ["chat.public"]}
    async with ws(running.url, token(channels=grant)) as client:
        await client.subscribe("chat.x")
        for request in (
            {"type": "subscribe", "id": 7, "channel": "jobs.1"},
            {"type": "publish", "id": 8, "channel": "chat.x", "data": 1},
        ):
            reply = await client.request(request)
            assert (reply["type"], reply["code"], reply["id"]) == ("error", "forbidden", request["id"])
        published = await client.publish("chat.public", "ok")  # the connection stays open
        assert published["seq"] == 1
        replay = await client.request(
            {"type": "replay", "id": 9, "channel": "jobs.1", "since": {"epoch": "e", "seq": 0}}
        )
        assert replay["code"] == "forbidden"  # third error: max_errors closes with 1008
        assert await closed_with(client) == 1008


async def test_no_channels_claim_grants_nothing(start_server: Any) -> None:
    running = await start_server(jwt_secret=SECRET)
    async with ws(running.url, mint(claims("alice"))) as client:
        reply = await client.request({"type": "subscribe", "id": 1, "channel": "chat.x"})
        assert reply["code"] == "forbidden"


# -- expiry and refresh -------------------------------------------------------------------


async def test_expiry_closes_4001_and_a_refresh_keeps_the_connection(start_server: Any) -> None:
    running = await start_server(jwt_secret=SECRET)
    expiring = mint(claims("alice", 0, channels=CHAT) | {"exp": int(time.time()) + 2})
    async with ws(running.url, expiring) as client:
        error = await next_of(client, "error")
        assert error["code"] == "token_expired"
        assert await closed_with(client) == 4001
    short = claims("alice", 0, channels=CHAT) | {"exp": int(time.time()) + 4}  # room for a loaded machine
    async with ws(running.url, mint(short)) as client:
        renewed = await client.request({"type": "refresh", "id": 9, "token": token(ttl=600)})
        assert renewed["type"] == "refreshed" and renewed["exp"] > short["exp"]
        bad = await client.request({"type": "refresh", "id": 10, "token": token("mallory")})
        assert bad["code"] == "bad_request"
        await trio.sleep_until(trio.current_time() + (short["exp"] - time.time()) + 0.5)
        assert (await client.publish("chat.x", "still here"))["seq"] == 1


# -- presence -----------------------------------------------------------------------------


async def test_presence_lists_and_join_leave_in_channel_order(start_server: Any) -> None:
    running = await start_server(jwt_secret=SECRET, api_key=API_KEY)
    async with ws(running.url, token("alice")) as alice:
        await alice.subscribe("chat.room1", presence=True)
        assert (await next_of(alice, "join"))["user"] == "alice"
        await running.server.publish("chat.room1", "before bob")  # (a client's publish() skips messages)
        async with ws(running.url, token("bob")) as bob:
            await bob.subscribe("chat.room1")
            await running.server.publish("chat.room1", "after bob")
            seen = [await next_of(alice, "message", "join") for _ in range(3)]
            assert [(f["type"], f.get("data"), f.get("user")) for f in seen] == [
                ("message", "before bob", None),
                ("join", None, "bob"),
                ("message", "after bob", None),
            ]
            listed = await alice.request({"type": "presence", "id": 5, "channel": "chat.room1"})
            assert [m["user"] for m in listed["members"]] == ["alice", "bob"]
            assert listed["members"][1]["conn"] == seen[1]["conn"]
            api = AsyncApiClient(f"http://127.0.0.1:{running.port}", API_KEY)
            assert [m["user"] for m in await api.presence("chat.room1")] == ["alice", "bob"]
            await bob.request({"type": "unsubscribe", "id": 3, "channel": "chat.room1"})
            leave = await next_of(alice, "leave")
            assert (leave["user"], leave["conn"]) == ("bob", seen[1]["conn"])
            await bob.subscribe("chat.room1")
            assert (await next_of(alice, "join"))["user"] == "bob"
        leave = await next_of(alice, "leave")  # bob's connection ended
        assert leave["user"] == "bob"
        forbidden = await alice.request({"type": "presence", "id": 6, "channel": "jobs.1"})
        assert forbidden["code"] == "forbidden"


async def test_presence_without_tokens_has_null_users(server: Any) -> None:
    async with ws(server.url) as client:
        await client.subscribe("room", presence=True)
        join = await next_of(client, "join")
        assert join["user"] is None and join["conn"].startswith("c-")


# -- the server API -----------------------------------------------------------------------


async def test_api_publish_reaches_a_subscriber_and_needs_the_key(start_server: Any) -> None:
    running = await start_server(api_key=API_KEY)
    base = f"http://127.0.0.1:{running.port}"
    async with ws(running.url) as subscriber:
        await subscriber.subscribe("news")
        published = await trio.to_thread.run_sync(lambda: ApiClient(base, API_KEY).publish("news", {"n": 1}, key="k1"))
        assert published["seq"] == 1
        message = (await subscriber.messages(1))[0]
        assert (message["data"], message["seq"]) == ({"n": 1}, 1)
        again = await AsyncApiClient(base, API_KEY).publish("news", {"n": 1}, key="k1")
        assert again == published  # the idempotency key: the original position
        with pytest.raises(ApiCallError) as info:
            await AsyncApiClient(base, "wrong-key-of-sixteen").publish("news", 2)
        assert info.value.status == 401
        answer = await http_request(running.port, "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2", b"{}")
        assert answer.status == 401 and answer.json()["error"]["code"] == "unauthorized"
        api = AsyncApiClient(base, API_KEY)
        results = await api.broadcast(["news", "other"], b"\x00raw")
        assert [r["channel"] for r in results] == ["news", "other"]
        assert (await subscriber.messages(1))[0]["data"] == {"$bytes": "AHJhdw=="}
        history = await api.history("news")
        assert [m["data"] for m in history["messages"]] == [{"n": 1}, b"\x00raw"]
        assert [m["seq"] for m in (await api.history("news", since=1))["messages"]] == [2]
        channels = {c["channel"]: c for c in await api.channels()}
        assert channels["news"]["subscribers"] == 1 and channels["news"]["seq"] == 2


async def test_api_errors(start_server: Any) -> None:
    running = await start_server(api_key=API_KEY, api_max_body=100)
    auth = f"Authorization: apikey {API_KEY}"
    big = await http_request(
        running.port, f"POST /api/publish HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Length: 101", b"x" * 101
    )
    assert big.status == 413 and big.json()["error"]["code"] == "too_large"
    bad = await http_request(
        running.port, f"POST /api/publish HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Length: 5", b"{nope"
    )
    assert bad.status == 400 and bad.json()["error"]["code"] == "bad_request"
    unknown = await http_request(running.port, f"GET /api/nothing HTTP/1.1\r\nHost: x\r\n{auth}")
    assert unknown.status == 404 and unknown.json()["error"]["code"] == "not_found"
    off = await start_server()
    assert (await http_request(off.port, f"GET /api/channels HTTP/1.1\r\nHost: x\r\n{auth}")).status == 404


async def test_api_disconnect_closes_4003(start_server: Any) -> None:
    running = await start_server(jwt_secret=SECRET, api_key=API_KEY)
    async with ws(running.url, token("bob")) as bob, ws(running.url, token("carol")) as carol:
        count = await AsyncApiClient(f"http://127.0.0.1:{running.port}", API_KEY).disconnect("bob")
        assert count == 1
        assert await closed_with(bob) == 4003
        await carol.subscribe("chat.x")  # the others stay


# -- exposure: origins, rates, per-address cap --------------------------------------------


async def test_origin_rate_and_address_limits(start_server: Any) -> None:
    running = await start_server(
        allowed_origin=("https://*.example.com",), publish_rate=2, max_connections_per_ip=2, max_errors=4
    )
    assert (await upgrade(running.port, origin="https://evil.test"))[0] == 403
    assert (await upgrade(running.port, origin="https://app.example.com"))[0] == 101
    async with ws(running.url) as one, ws(running.url, headers=[("Origin", "https://a.example.com")]):
        assert (await upgrade(running.port))[0] == 429
        codes = []
        for n in range(5):
            reply = await one.request({"type": "publish", "id": n, "channel": "c", "data": n})
            codes.append(reply.get("code", reply["type"]))
        assert codes[:2] == ["published", "published"] and "rate_limited" in codes
        # rate_limited counts toward max_errors (4): keep publishing faster than 2/s until 1008
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            for n in range(5, 45):  # 40 at once: far more than 2 a second, whatever the machine's load
                await one.send({"type": "publish", "id": n, "channel": "c", "data": n})
        assert await closed_with(one) == 1008


# -- TLS ----------------------------------------------------------------------------------


async def test_wss_and_https_through_tls(start_server: Any, tmp_path: Path) -> None:
    certfile, keyfile = self_signed(tmp_path)
    running = await start_server(certfile=certfile, keyfile=keyfile, api_key=API_KEY, jwt_secret=SECRET)
    trust = ssl.create_default_context(cafile=certfile)
    url = f"wss://127.0.0.1:{running.port}/"
    async with ws(url, token(), ssl_context=trust) as client:
        await client.subscribe("chat.tls")
        result = await AsyncApiClient(f"https://127.0.0.1:{running.port}", API_KEY, ssl_context=trust).publish(
            "chat.tls", "secure"
        )
        assert result["seq"] == 1
        assert (await client.messages(1))[0]["data"] == "secure"
    published = await trio.to_thread.run_sync(
        lambda: ApiClient(f"https://127.0.0.1:{running.port}", API_KEY, ssl_context=trust).publish("chat.tls", 2)
    )
    assert published["seq"] == 2


# -- embedding ----------------------------------------------------------------------------


async def test_an_embedding_app_publishes_directly(server: Any) -> None:
    async with ws(server.url) as subscriber:
        await subscriber.subscribe("app.events")
        position = await server.server.publish("app.events", {"from": "app"}, key="once")
        again = await server.server.publish("app.events", {"from": "app"}, key="once")
        assert position == again and position.seq == 1
        assert (await subscriber.messages(1))[0]["data"] == {"from": "app"}
    await wait_until(lambda: server.server.websockets == 0)


# -- logs ---------------------------------------------------------------------------------


async def test_tokens_keys_and_query_strings_never_reach_the_logs(
    start_server: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    monkeypatch.setattr(logging.getLogger("wsnursery"), "propagate", True)
    caplog.set_level(logging.DEBUG, logger="wsnursery")
    running = await start_server(jwt_secret=SECRET, api_key=API_KEY, log_level="debug")
    good, bad = token("alice"), token("alice", ttl=-5)
    async with ws(running.url, good, query=True) as client:
        await client.subscribe("chat.x")
    assert (await upgrade(running.port, f"/?token={bad}&x=secretquery"))[0] == 401
    await AsyncApiClient(f"http://127.0.0.1:{running.port}", API_KEY).publish("chat.x", 1)
    await wait_until(lambda: any(r.getMessage() == "close" for r in caplog.records), what="the close log line")
    logged = "\n".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)
    assert "alice" in logged  # the sub is logged: the records were captured
    for secret in (good, bad, "secretquery", API_KEY, SECRET, "token="):
        assert secret not in logged


async def test_join_and_leave_keep_the_channel_order_through_a_random_run(server: Any) -> None:
    """Publishes, joins and leaves in a seeded random order: the watcher sees exactly that order."""
    import random

    rng = random.Random(13)
    async with contextlib.AsyncExitStack() as stack:
        watcher = await stack.enter_async_context(ws(server.url))
        await watcher.subscribe("order", presence=True)
        own = await next_of(watcher, "join")
        idle: list[Client] = [await stack.enter_async_context(ws(server.url)) for _ in range(4)]
        members: list[Client] = []
        expected: list[tuple[str, Any]] = []
        for step in range(40):
            action = rng.choice(["publish", "join", "leave"])
            if action == "join" and idle:
                client = idle.pop()
                await client.request({"type": "subscribe", "id": step, "channel": "order"})
                members.append(client)
                expected.append(("join", id(client)))
            elif action == "leave" and members:
                client = members.pop(rng.randrange(len(members)))
                await client.request({"type": "unsubscribe", "id": step, "channel": "order"})
                idle.append(client)
                expected.append(("leave", id(client)))
            else:
                await server.server.publish("order", step)
                expected.append(("message", step))
        assert {kind for kind, _ in expected} == {"message", "join", "leave"}
        conns: dict[int, str] = {}  # a client's conn name, learnt from its first join
        seen: list[tuple[str, Any]] = []
        for kind, value in expected:
            frame = await next_of(watcher, "message", "join", "leave")
            if frame["type"] == "message":
                seen.append(("message", frame["data"]))
                continue
            if frame["type"] == "join" and kind == "join" and value not in conns:
                conns[value] = frame["conn"]
            owner = next((client for client, conn in conns.items() if conn == frame["conn"]), None)
            seen.append((frame["type"], owner))
        assert seen == expected
        assert own["conn"] not in conns.values()


async def test_tls_port_survives_plain_clients_and_serves_https_health(start_server: Any, tmp_path: Path) -> None:
    certfile, keyfile = self_signed(tmp_path)
    running = await start_server(certfile=certfile, keyfile=keyfile)
    # Plain HTTP on the TLS port: the TLS handshake fails, the socket is closed, nothing is logged
    # as an error (the server_errors fixture), and the server goes on serving.
    with trio.fail_after(TIMEOUT):
        plain = await trio.open_tcp_stream("127.0.0.1", running.port)
        async with plain:
            await plain.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            while await plain.receive_some(65536):
                pass
    trust = ssl.create_default_context(cafile=certfile)
    with trio.fail_after(TIMEOUT):
        tls_stream = trio.SSLStream(
            await trio.open_tcp_stream("127.0.0.1", running.port),
            trust,
            server_hostname="127.0.0.1",
            https_compatible=True,
        )
        async with tls_stream:
            await tls_stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = bytearray()
            while chunk := await tls_stream.receive_some(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in data


# -- the SDK against these servers --------------------------------------------------------


async def test_the_sdk_connects_with_a_token_and_renews_it_in_band(start_server: Any) -> None:
    import wsnursery.client as wc

    running = await start_server(jwt_secret=SECRET)
    minted: list[str] = []

    def fresh_token() -> str:  # the SDK asks again before expiry and sends a refresh
        minted.append(mint(claims("alice", 0, channels=CHAT) | {"exp": int(time.time()) + 6}))
        return minted[-1]

    with trio.fail_after(30):
        async with wc.connect(running.url, token=fresh_token, token_refresh_margin=4.0) as client:
            async with client.subscribe("chat.sdk") as messages:
                await client.publish("chat.sdk", "one")
                first_exp = claims_exp(minted[0])
                await wait_until(lambda: client.stats.token_refreshes >= 1, timeout=20, what="an in-band refresh")
                await trio.sleep_until(trio.current_time() + max(0.0, first_exp - time.time()) + 0.5)
                await client.publish("chat.sdk", "two")  # past the first token's exp: still the same link
                got = []
                async for message in messages:
                    got.append(message.data)
                    if len(got) == 2:
                        break
                assert got == ["one", "two"] and client.stats.reconnects == 0
            with pytest.raises(wc.ServerError) as info:
                await client.publish("jobs.1", "not mine")
            assert "forbidden" in str(info.value)
    with pytest.raises(wc.Forbidden):  # 401 before the upgrade: no retrying
        async with wc.connect(running.url, token="not-a-jwt", max_reconnects=1):
            pass


def claims_exp(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


async def test_the_harness_load_clients_run_with_tokens_on(start_server: Any) -> None:
    """``python -m harness load --url ws://...?token=JWT``: the harness's clients carry a token."""
    import sys

    from .harness.test_load_commands import REPO

    running = await start_server(jwt_secret=SECRET)
    everything = token("loadtest", channels={"subscribe": ["*"], "publish": ["*"]})
    argv = [
        sys.executable,
        "-m",
        "harness",
        "load",
        "--clients",
        "2",
        "--messages",
        "10",
        "--quiet",
        "--url",
        f"ws://127.0.0.1:{running.port}/?token={everything}",
    ]
    with trio.fail_after(60):
        done = await trio.run_process(argv, cwd=REPO, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"throughput msg/s" in done.stdout
    refused = argv[:-1] + [f"ws://127.0.0.1:{running.port}/"]  # no token: every client gets 401
    with trio.fail_after(60):
        done = await trio.run_process(refused, cwd=REPO, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode != 0
