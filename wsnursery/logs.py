"""Log setup: one line per event, as text or as JSON objects.

Every byte a client sends is hostile, and some reach log lines (close reasons, channel
names, paths...). So the formatters escape, and no call site has to remember to:
- text: the message (after ``%`` formatting) and every field value go through ``escape``:
  control characters, line and paragraph separators, bidi and other format characters,
  lone surrogates and the backslash itself become ``\\xNN`` / ``\\uNNNN`` / ``\\\\``, so
  one event is one line, and a field value with a space, ``=`` or ``"`` is quoted
  (``reason="a b"``), so it cannot pose as another field. A traceback's lines are indented
  with ``  | ``: only a record's first line starts at column 0;
- JSON: ``json.dumps`` escapes every control and non-ASCII character.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

LOGGER_NAME = "wsnursery"
_PLAIN_VALUE = re.compile(r"[!#-<>-\[\]-~]+")  # printable ASCII but space, '"', '=' and '\\'


def escape(text: str) -> str:
    """``text`` with every character that is not printable (and the backslash) escaped."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case, at C speed
    return "".join(char if char.isprintable() and char != "\\" else _escape_char(char) for char in text)


def _escape_char(char: str) -> str:
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def field_value(value: object) -> str:
    """A field value for a text line: as is when plain, else escaped and in double quotes."""
    text = str(value)
    if _PLAIN_VALUE.fullmatch(text):
        return text
    return '"' + escape(text).replace('"', '\\"') + '"'


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``2026-11-23 16:30:41,123 INFO wsnursery.server: open remote=… endpoint=…``.

    The date is formatted once per second, not once per line: a server logs a line per
    connection open and close, so this is on the connection-rate path.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        message = escape(record.getMessage())
        text = f"{self._stamp},{int(record.msecs):03d} {record.levelname} {record.name}: {message}"
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(f"{key}={field_value(value)}" for key, value in fields.items())
        if record.exc_info:
            lines = self.formatException(record.exc_info).splitlines()
            text += "".join(f"\n  | {escape(line)}" for line in lines)
        return text


def configure(level: str, fmt: str) -> None:
    # What no line shows is not collected (the logging HOWTO's "Optimization" section):
    # the caller's file and line, thread, process and multiprocessing names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}")
