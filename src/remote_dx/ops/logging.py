"""Structured logs: one JSON object per line, selected with ``RDX_LOG_FORMAT=json``.

Every line carries ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and, where the
code knows them, ``request_id`` (the ``X-Request-ID`` of the HTTP request being served),
``study_uid`` (the study a task or a C-STORE is working on) and ``user``. Those come from
context variables set once at the edge (HTTP middleware, Celery ``task_prerun``, the C-STORE
wrapper), so no logging call has to pass them; ``logging.info(..., extra={"study_uid": ...})``
overrides them for one line. A traceback goes in ``exc_info`` as text, inside the same object,
so a log shipper never sees a multi-line record.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "rdx_request_id", default=None
)
study_uid_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "rdx_study_uid", default=None
)
user_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("rdx_user", default=None)

CONTEXT_FIELDS = ("request_id", "study_uid", "user")
_VARS = {"request_id": request_id_var, "study_uid": study_uid_var, "user": user_var}

# A client-supplied X-Request-ID is echoed only when it is short and harmless in a log line.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

# Attributes every LogRecord has; anything else passed through ``extra`` is logged as a field.
_STANDARD = frozenset(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


def new_request_id(supplied: str | None = None) -> str:
    """The client's ``X-Request-ID`` if it is acceptable, else a fresh random one."""
    if supplied and _REQUEST_ID.match(supplied):
        return supplied
    return uuid.uuid4().hex


@contextlib.contextmanager
def log_context(**values: str | None) -> Iterator[None]:
    """Bind ``request_id`` / ``study_uid`` / ``user`` for the lines logged inside the block."""
    tokens = []
    for name, value in values.items():
        tokens.append((_VARS[name], _VARS[name].set(value)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class JsonFormatter(logging.Formatter):
    """A LogRecord as one JSON object (``ensure_ascii=False``: 中文 stays readable)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name) or _VARS[name].get()
            if value:
                entry[name] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value
        entry.setdefault("process", record.process)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Root logging for a process (``serve``, ``api``, ``scp``, ``worker``).

    Text keeps any handler a host program already installed (tests, an embedding app); JSON
    replaces the root handlers' formatters so every line of the process is one object.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        root.addHandler(handler)
        root.setLevel(level.upper())
    if log_format == "json":
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())
        # uvicorn's own loggers keep private handlers unless told to propagate.
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
    else:
        for handler in root.handlers:
            if handler.formatter is None:
                handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    # pynetdicom narrates every PDU at INFO; the receiver logs what matters itself.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
