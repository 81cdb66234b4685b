"""Issue 12, item 9: whatever a client sends that reaches a log line is escaped (no log forging)."""

from __future__ import annotations

import io
import json
import logging
import re
import struct
import sys

import pytest

from wsnursery import logs

from .helpers import raw_welcome, wait_until
from .wsclient import RawClient

FORGED = "bye\n2026-01-01 00:00:00,000 ERROR wsnursery.server: forged\r\x1b[2Jx\u2028y\u202ez\ud800"
LINE_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ wsnursery")


def record(
    message: str, *args: object, fields: dict[str, object] | None = None, exc: bool = False
) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(FORGED)
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("wsnursery.test", logging.INFO, __file__, 1, message, args, exc_info)
    if fields is not None:
        made.fields = fields  # type: ignore[attr-defined]
    return made


def assert_one_event(text: str) -> None:
    lines = text.split("\n")
    assert LINE_START.match(lines[0]), lines[0]
    for line in lines[1:]:
        assert line.startswith("  | "), f"a line of one record starts at column 0: {line!r}"
    for char in text:
        assert char == "\n" or char.isprintable(), f"unescaped {char!r} in {text!r}"


def test_the_text_formatter_escapes_message_arguments_and_fields():
    text = logs.TextFormatter().format(record("closed %s", FORGED, fields={"reason": FORGED, "code": 1000}))
    assert "\n" not in text
    assert_one_event(text)
    assert "code=1000" in text
    assert (
        r'reason="bye\x0a2026-01-01 00:00:00,000 ERROR wsnursery.server: forged\x0d\x1b[2Jx\u2028y\u202ez\ud800"'
        in text
    )


def test_a_field_value_cannot_pose_as_another_field():
    text = logs.TextFormatter().format(record("close", fields={"reason": 'x code=4000 "q" \\', "code": 1000}))
    assert text.endswith(r'reason="x code=4000 \"q\" \\" code=1000')
    assert logs.field_value("plain:value/1.2") == "plain:value/1.2"
    assert logs.field_value("") == '""'


def test_a_traceback_is_indented_so_no_line_of_it_starts_a_record():
    text = logs.TextFormatter().format(record("unexpected error", exc=True))
    assert "Traceback" in text and "ValueError" in text
    assert_one_event(text)


def test_the_json_formatter_writes_one_line_that_decodes_back():
    text = logs.JsonFormatter().format(record("closed %s", FORGED, fields={"reason": FORGED}))
    assert "\n" not in text and text.isascii()
    line = json.loads(text)
    assert line["reason"] == FORGED and line["msg"] == f"closed {FORGED}"


@pytest.mark.parametrize(
    "text, escaped",
    [
        ("plain text", "plain text"),
        ("a\\b", "a\\\\b"),
        ("\x00\x7f\x85\xad", "\\x00\\x7f\\x85\\xad"),
        ("\u200b\U000e0001é", "\\u200b\\U000e0001é"),
    ],
)
def test_escape(text, escaped):
    assert logs.escape(text) == escaped


async def test_a_close_reason_with_a_newline_writes_one_log_line(server):
    """End to end: the forged close reason the issue used, through the server's close line."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.TextFormatter())
    logger = logging.getLogger(logs.LOGGER_NAME)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        client = await RawClient.connect(server.port)
        await raw_welcome(client)
        reason = FORGED.replace("\ud800", "").encode("utf-8")[:123]
        await client.send_frame(0x8, struct.pack("!H", 1000) + reason)
        assert await client.read_close_code() == 1000
        await client.aclose()
        await wait_until(lambda: " close " in out.getvalue() or ": close" in out.getvalue(), what="the close line")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    for line in out.getvalue().splitlines():
        assert LINE_START.match(line), f"forged or broken log line: {line!r}"
    [close] = [line for line in out.getvalue().splitlines() if ": close " in line]
    assert r'reason="bye\x0a2026-01-01' in close


@pytest.mark.parametrize(
    ("fields", "tail"),
    [
        ({"remote": "127.0.0.1:5", "code": 1000}, "remote=127.0.0.1:5 code=1000"),  # all plain: one check
        ({"user": "", "code": 1000}, 'user="" code=1000'),  # empty is quoted, not "user= code"
        ({"a": "x!y", "b": "p q"}, 'a=x!y b="p q"'),  # the check's separator is plain, the space not
        ({"a": "x", "b": "="}, 'a=x b="="'),
    ],
)
def test_every_field_value_is_quoted_exactly_when_it_is_not_plain(fields, tail):
    assert logs.TextFormatter().format(record("open", fields=fields)).endswith(": open " + tail)
