"""Structured logging for vstore, built on stdlib ``logging``.

This module owns:

* the record shape: the message is a stable event name (``"raft.leader_elected"``) and the
  fields come from ``extra``; everything else on a ``LogRecord`` (``args``, ``levelname``,
  ``threadName``, ...) is plumbing and is never printed as a field;
* the two output formats, ``text`` (one logfmt-style line, traceback lines indented below
  it) and ``json`` (one object per line), both produced from the same field list;
* the per-task context (``node``, ``role``, ``request_id``) kept in ``contextvars`` and
  stamped onto records by :class:`ContextFilter`;
* :func:`setup_logging`, which configures the ``vstore`` logger hierarchy only;
* :class:`RateLimitedLogger`, which turns a storm of identical warnings into one line
  plus a count.

Rules:

1. It imports only the stdlib: every other vstore module may log, so this one may depend
   on none of them.
2. It never touches the root logger or its handlers. pytest's ``caplog`` and the
   ``checklogs`` fixture in ``tests/conftest.py`` hang their handlers on the root and on
   ``vstore``; a logging setup that cleared them would silently blind the tests.
3. Context is per asyncio task, never process-global: the in-process test cluster runs
   several nodes in one interpreter, each in its own tasks, and a global "current node"
   would tag one node's lines with another's name.
4. Formatting never raises: a field whose value cannot be rendered is rendered with
   ``repr``/``str`` rather than losing the line.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, TextIO

__all__ = [
    "CONTEXT_FIELDS",
    "ContextFilter",
    "JsonFormatter",
    "RateLimitedLogger",
    "TextFormatter",
    "bind",
    "current_context",
    "log_context",
    "quote_text_value",
    "record_fields",
    "setup_logging",
    "teardown_logging",
]

# --------------------------------------------------------------------------------------
# Context
# --------------------------------------------------------------------------------------

#: Context field names, in the order they are printed (after ``event``).
CONTEXT_FIELDS: tuple[str, ...] = ("node", "role", "request_id")

# One ContextVar per field rather than one holding a dict: a task that binds only
# request_id must not have to copy and re-set node/role, and resetting one field with
# its token cannot clobber a concurrent change to another.
_CONTEXT_VARS: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"vstore.logs.{name}", default=None) for name in CONTEXT_FIELDS
}

_UNSET: Any = object()


def _context_items(node: Any, role: Any, request_id: Any) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in (("node", node), ("role", role), ("request_id", request_id))
            if v is not _UNSET]


def bind(*, node: str | None = _UNSET, role: str | None = _UNSET,
         request_id: str | None = _UNSET) -> None:
    """Set context fields for the rest of the current task (and tasks it creates later).

    asyncio copies the context when a task is created, so ``bind(node="cs-1")`` at the top
    of a node's main coroutine tags every line that node's tasks log, and nothing logged by
    other nodes' tasks in the same process. Passing ``None`` unsets a field; omitted
    fields are left as they are. Not undone automatically: use :func:`log_context` for a
    scoped change (for example one request).
    """
    for name, value in _context_items(node, role, request_id):
        _CONTEXT_VARS[name].set(None if value is None else str(value))


@contextlib.contextmanager
def log_context(*, node: str | None = _UNSET, role: str | None = _UNSET,
                request_id: str | None = _UNSET) -> Iterator[None]:
    """Set context fields inside a ``with`` block and restore the previous values on exit.

    Same arguments as :func:`bind`. Restoration uses the ContextVar tokens, so nested
    blocks unwind correctly even when an exception leaves the block. The block must be
    entered and exited in the same context (the same task), as with any ContextVar token.
    """
    tokens = [(_CONTEXT_VARS[name], _CONTEXT_VARS[name].set(None if value is None else str(value)))
              for name, value in _context_items(node, role, request_id)]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current_context() -> dict[str, str]:
    """The context fields set in the current task, without the unset ones."""
    out = {}
    for name, var in _CONTEXT_VARS.items():
        value = var.get()
        if value is not None:
            out[name] = value
    return out


class ContextFilter(logging.Filter):
    """Stamp ``node``, ``role`` and ``request_id`` onto each record it sees.

    Values come from the current task's context (:func:`bind`, :func:`log_context`),
    falling back to ``defaults`` (the process-wide values given to :func:`setup_logging`).
    The defaults exist because threads started by ``loop.run_in_executor`` do not inherit
    the caller's context; a single-node process still wants its node name on those lines.
    A field the caller passed explicitly in ``extra`` is left alone. Unset fields are not
    added at all, so they are omitted from the output rather than printed as ``None``.

    Install it on handlers, not on loggers: a logger's filters only see records logged on
    that exact logger, not those propagating up from ``vstore.metadata.raft``. The filter
    runs synchronously in the logging call, hence in the task that logged.
    """

    def __init__(self, defaults: Mapping[str, str | None] | None = None) -> None:
        super().__init__()
        unknown = set(defaults or ()) - set(CONTEXT_FIELDS)
        if unknown:
            raise ValueError(f"unknown context fields {sorted(unknown)}; known: {CONTEXT_FIELDS}")
        self.defaults = {k: str(v) for k, v in (defaults or {}).items() if v is not None}

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT_VARS.items():
            if name in record.__dict__:
                continue
            value = var.get()
            if value is None:
                value = self.defaults.get(name)
            if value is not None:
                setattr(record, name, value)
        return True


# --------------------------------------------------------------------------------------
# Fields and formatting
# --------------------------------------------------------------------------------------

# Everything a bare LogRecord carries, computed rather than listed by hand so attributes
# added by newer Pythons (3.12's taskName) are excluded automatically. "message" and
# "asctime" are added later by Formatter.format.
_STANDARD_ATTRS: frozenset[str] = frozenset(
    logging.LogRecord("x", logging.INFO, __file__, 0, "x", None, None).__dict__
) | {"message", "asctime", "taskName"}

# Keys the formatters own. An extra field with one of these names is renamed with a
# trailing underscore instead of being dropped or printed twice.
_RESERVED_KEYS: frozenset[str] = frozenset({"ts", "level", "logger", "event", "exc", "traceback"})


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of a record: context fields first (in CONTEXT_FIELDS order), then what
    came via ``extra`` in the order given. Standard LogRecord attributes and private
    (``_``-prefixed) attributes are excluded. Deterministic."""
    fields: dict[str, Any] = {}
    attrs = record.__dict__
    for name in CONTEXT_FIELDS:
        if name in attrs:
            fields[name] = attrs[name]
    for key, value in attrs.items():
        key = str(key)  # extra={1: ...} is accepted by logging; keep the line anyway
        if key in _STANDARD_ATTRS or key in fields or key.startswith("_"):
            continue
        fields[key + "_" if key in _RESERVED_KEYS else key] = value
    return fields


def _iso_utc(record: logging.LogRecord) -> str:
    # record.msecs is the fractional part of record.created; formatting created with
    # gmtime keeps seconds and milliseconds from the same reading.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + \
        f".{int(record.msecs):03d}Z"


def _exc_summary(exc_type: type[BaseException], exc: BaseException | None) -> str:
    # The same "module.Type: message" line the traceback ends with. Built by hand rather
    # than taken from traceback.format_exception_only, whose last line is an exception
    # note (3.11 add_note) when there is one, or a caret line for SyntaxError.
    name = exc_type.__qualname__
    if exc_type.__module__ not in ("builtins", "__main__"):
        name = f"{exc_type.__module__}.{name}"
    try:
        text = str(exc) if exc is not None else ""
    except Exception:  # a broken __str__ must not lose the log line
        text = "<unprintable>"
    return f"{name}: {text}" if text else name


def _has_exc(record: logging.LogRecord) -> bool:
    # log.exception() outside an except block gives exc_info == (None, None, None).
    return bool(record.exc_info) and record.exc_info[0] is not None  # type: ignore[index]


def _text_value(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return repr(value)
    try:
        return str(value)
    except Exception:
        return object.__repr__(value)


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote_text_value(text: str) -> str:
    """Render one value for the text format.

    Bare when unambiguous; double-quoted when empty or when it holds a space, ``"``, ``=``,
    a backslash or a non-printable character, with ``\\\\``, ``\\"``, ``\\n``, ``\\r``, ``\\t`` and
    ``\\xNN``/``\\uNNNN`` escapes, so every record stays on one line and ``key=value`` splitting
    never goes wrong. Deterministic.
    """
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    out = []
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif not c.isprintable() or c == "\u2028" or c == "\u2029":
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger> event=<event> node=.. role=.. request_id=.. <fields> [exc=".."]``

    Followed, when the record carries an exception or stack, by the full traceback on
    the next lines, each indented by four spaces so that "lines starting with a timestamp"
    still splits the stream into records.
    """

    indent = "    "

    def format(self, record: logging.LogRecord) -> str:
        parts = [_iso_utc(record), record.levelname, record.name,
                 "event=" + quote_text_value(_safe_message(record))]
        for key, value in record_fields(record).items():
            parts.append(f"{key}={quote_text_value(_text_value(value))}")
        tail: list[str] = []
        if _has_exc(record):
            exc_type, exc, _ = record.exc_info  # type: ignore[misc]
            parts.append("exc=" + quote_text_value(_exc_summary(exc_type, exc)))
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)  # type: ignore[arg-type]
            tail.extend(record.exc_text.splitlines())
        if record.stack_info:
            tail.extend(self.formatStack(record.stack_info).splitlines())
        line = " ".join(parts)
        if tail:
            line += "\n" + "\n".join(self.indent + t for t in tail)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``event``, then the fields.

    With an exception: ``exc`` is the summary string (``"ValueError: boom"``, the same text
    as the text format's ``exc=``) and ``traceback`` the full formatted traceback, both
    strings. Field values JSON cannot encode natively are written with ``str()``; the
    output is always ASCII, so a record is exactly one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {"ts": _iso_utc(record), "level": record.levelname,
                               "logger": record.name, "event": _safe_message(record)}
        obj.update(record_fields(record))
        if _has_exc(record):
            exc_type, exc, _ = record.exc_info  # type: ignore[misc]
            obj["exc"] = _exc_summary(exc_type, exc)
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)  # type: ignore[arg-type]
            obj["traceback"] = record.exc_text
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        return json.dumps(obj, default=_json_default, ensure_ascii=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    try:
        return str(value)
    except Exception:
        return object.__repr__(value)


def _safe_message(record: logging.LogRecord) -> str:
    # getMessage applies %-args; a mismatched format must still produce a line.
    try:
        return record.getMessage()
    except Exception:
        return str(record.msg)


# --------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}
_FORMATS: dict[str, type[logging.Formatter]] = {"text": TextFormatter, "json": JsonFormatter}

# Marks handlers installed by setup_logging, so a second call replaces exactly those and
# leaves alone handlers that others (pytest, the test conftest, an embedding app) added.
_OWNED_ATTR = "_vstore_logs_owned"
_setup_lock = threading.Lock()


def setup_logging(level: str = "info", fmt: str = "text", file: str | None = None,
                  node: str | None = None, role: str | None = None,
                  *, stream: TextIO | None = None) -> logging.Handler:
    """Configure the ``vstore`` logger: one handler, the chosen format, the context filter.

    ``level`` is one of debug/info/warning/error/critical (any case); ``fmt`` is ``"text"``
    or ``"json"``. Output goes to ``file`` when given (a ``WatchedFileHandler``, which
    reopens the file after logrotate moves it, rather than a ``RotatingFileHandler`` that
    would race an external rotator), else to ``stream`` (default ``sys.stderr``).
    ``node`` and ``role`` become process-wide defaults for the context fields; a task's
    own :func:`bind` values take precedence over them.

    Idempotent: a second call closes and replaces the handler of the first, never adds a
    second one. The root logger is not touched, and ``vstore`` keeps propagating to it,
    so pytest's caplog still sees every record; an application that also puts a handler
    on the root will therefore print vstore lines twice, and should not do that.

    Raises ValueError for an unknown level or format. Returns the installed handler.
    """
    try:
        level_no = _LEVELS[level.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"log level {level!r}: must be one of {', '.join(_LEVELS)}") from None
    try:
        formatter_cls = _FORMATS[fmt]
    except KeyError:
        raise ValueError(f"log format {fmt!r}: must be one of {', '.join(_FORMATS)}") from None

    handler: logging.Handler
    if file is not None:
        handler = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter_cls())
    handler.addFilter(ContextFilter({"node": node, "role": role}))
    setattr(handler, _OWNED_ATTR, True)

    with _setup_lock:
        logger = logging.getLogger("vstore")
        _remove_owned_handlers(logger)
        logger.addHandler(handler)
        logger.setLevel(level_no)
    return handler


def teardown_logging() -> None:
    """Remove and close the handler installed by :func:`setup_logging`, if any.

    For process shutdown and for tests, so a configured handler does not outlive the
    test that made it. Other handlers on ``vstore`` are left alone; the level is kept.
    """
    with _setup_lock:
        _remove_owned_handlers(logging.getLogger("vstore"))


def _remove_owned_handlers(logger: logging.Logger) -> None:
    for old in [h for h in logger.handlers if getattr(h, _OWNED_ATTR, False)]:
        logger.removeHandler(old)
        old.close()


# --------------------------------------------------------------------------------------
# Rate limiting
# --------------------------------------------------------------------------------------


class _Slot:
    __slots__ = ("last_emit_s", "suppressed")

    def __init__(self, now_s: float) -> None:
        self.last_emit_s = now_s
        self.suppressed = 0


class RateLimitedLogger:
    """Log an event at most once per ``interval_s`` per ``(event, key)``, counting the rest.

    ``key`` separates occurrences that an operator must see separately, e.g. the CS id
    for "cs.unreachable": one dead chunkserver must not hide another. The first occurrence
    of an ``(event, key)`` is logged at once. Repeats within ``interval_s`` of the last
    emitted line are counted and dropped. The next occurrence after the interval is logged
    with ``suppressed=<count>`` and ``suppressed_s=<seconds since the previous emitted
    line>`` ("37 more in the last 60 s"); those fields are absent when nothing was dropped.

    Limits: at most ``max_keys`` distinct ``(event, key)`` pairs are remembered; past that
    the least recently seen pair is forgotten (1024 by default: far more than the distinct
    warnings a healthy node produces, small enough to be a few hundred KiB at worst). A
    forgotten pair's next occurrence is logged as a first occurrence and its pending count
    is lost. Counts are only reported with a later occurrence: a storm that stops is not
    summarised afterwards, because a summary line with no event behind it would be
    misleading to grep for.

    ``clock`` returns seconds (monotonic); tests inject a fake one. Thread-safe.
    """

    def __init__(self, log: logging.Logger, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 1024) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s = {interval_s!r}: must be > 0")
        if max_keys < 1:
            raise ValueError(f"max_keys = {max_keys!r}: must be >= 1")
        self.log = log
        self.interval_s = float(interval_s)
        self.clock = clock
        self.max_keys = max_keys
        self._slots: OrderedDict[tuple[str, Hashable], _Slot] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Number of (event, key) pairs currently remembered."""
        return len(self._slots)

    def debug(self, event: str, *, key: Hashable = None, extra: Mapping[str, Any] | None = None,
              exc_info: Any = None) -> bool:
        return self._log(logging.DEBUG, event, key, extra, exc_info)

    def info(self, event: str, *, key: Hashable = None, extra: Mapping[str, Any] | None = None,
             exc_info: Any = None) -> bool:
        return self._log(logging.INFO, event, key, extra, exc_info)

    def warning(self, event: str, *, key: Hashable = None, extra: Mapping[str, Any] | None = None,
                exc_info: Any = None) -> bool:
        """Log ``event`` at WARNING unless rate-limited. Returns True if a line was emitted."""
        return self._log(logging.WARNING, event, key, extra, exc_info)

    def error(self, event: str, *, key: Hashable = None, extra: Mapping[str, Any] | None = None,
              exc_info: Any = None) -> bool:
        return self._log(logging.ERROR, event, key, extra, exc_info)

    def _log(self, level: int, event: str, key: Hashable, extra: Mapping[str, Any] | None,
             exc_info: Any) -> bool:
        # Check isEnabledFor first so a disabled level neither counts nor takes a slot.
        if not self.log.isEnabledFor(level):
            return False
        now_s = self.clock()
        slot_key = (event, key)
        with self._lock:
            slot = self._slots.get(slot_key)
            if slot is None:
                self._slots[slot_key] = _Slot(now_s)
                while len(self._slots) > self.max_keys:
                    self._slots.popitem(last=False)
                suppressed, since_s = 0, 0.0
            else:
                self._slots.move_to_end(slot_key)
                if now_s - slot.last_emit_s < self.interval_s:
                    slot.suppressed += 1
                    return False
                suppressed, since_s = slot.suppressed, now_s - slot.last_emit_s
                slot.suppressed = 0
                slot.last_emit_s = now_s
        fields = dict(extra or {})
        if suppressed:
            fields["suppressed"] = suppressed
            fields["suppressed_s"] = round(since_s, 3)
        # stacklevel=3: _log -> warning() -> the caller, so funcName/lineno name the caller.
        self.log.log(level, event, extra=fields, exc_info=exc_info, stacklevel=3)
        return True
