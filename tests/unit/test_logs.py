"""Unit tests for vstore.logs: line formats, per-task context, setup, rate limiting.

Records are formatted directly or through handlers on private loggers, so these tests do
not depend on (or disturb) the ``vstore`` logger configuration of other tests. Context is
only changed inside log_context blocks, copied contexts or asyncio tasks, because a bare
bind() in a synchronous test would leak into the next test on the same thread.
"""

from __future__ import annotations

import ast
import asyncio
import calendar
import contextvars
import io
import itertools
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from vstore import logs
from vstore.logs import (
    ContextFilter,
    JsonFormatter,
    RateLimitedLogger,
    TextFormatter,
    bind,
    current_context,
    log_context,
    quote_text_value,
    record_fields,
    setup_logging,
    teardown_logging,
)

# 2026-11-23T01:02:03.456Z
_T0 = calendar.timegm((2026, 11, 23, 1, 2, 3, 0, 0, 0)) + 0.456
_ISO_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
_unique = itertools.count()


def make_record(event: str, *, name: str = "vstore.metadata.raft", level: int = logging.INFO,
                extra: dict | None = None, exc_info=None, args=()) -> logging.LogRecord:
    """A record as Logger.makeRecord builds it, at a fixed time."""
    record = logging.getLogger(name).makeRecord(name, level, __file__, 1, event, args, exc_info,
                                                extra=extra)
    record.created = _T0
    record.msecs = 456.0
    return record


def fmt_text(record: logging.LogRecord) -> str:
    ContextFilter().filter(record)
    return TextFormatter().format(record)


def fmt_json(record: logging.LogRecord) -> dict:
    ContextFilter().filter(record)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    return json.loads(line)


class ListHandler(logging.Handler):
    """Formats each record with the text formatter and keeps the lines."""

    def __init__(self, formatter: logging.Formatter | None = None) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(formatter or TextFormatter())
        self.addFilter(ContextFilter())
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def private_logger() -> Iterator[tuple[logging.Logger, ListHandler]]:
    """A logger outside the ``vstore`` hierarchy ("vstoretest.N" is not a child of
    "vstore"), so warnings logged on purpose here do not trip conftest's checklogs."""
    logger = logging.getLogger(f"vstoretest.logs{next(_unique)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = ListHandler()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


# -- text format -------------------------------------------------------------------------


def test_text_line_is_timestamp_level_logger_event_context_then_extra_fields() -> None:
    record = make_record("raft.leader_elected", extra={"term": 7, "index": 1234})
    with log_context(node="mds-1", role="mds"):
        line = fmt_text(record)
    assert line == ("2026-11-23T01:02:03.456Z INFO vstore.metadata.raft "
                    "event=raft.leader_elected node=mds-1 role=mds term=7 index=1234")


def test_context_fields_come_before_extra_fields_in_a_fixed_order() -> None:
    record = make_record("cs.read", extra={"chunk_id": 5})
    with log_context(request_id="r-9", role="cs", node="cs-2"):
        line = fmt_text(record)
    assert line.endswith("event=cs.read node=cs-2 role=cs request_id=r-9 chunk_id=5")


def test_standard_record_attributes_are_never_printed_as_fields() -> None:
    record = make_record("net.peer_%s", args=("up",), extra={"peer": "cs-3"})
    assert record_fields(record) == {"peer": "cs-3"}
    line = fmt_text(record)
    assert line.endswith("event=net.peer_up peer=cs-3")
    for attr in ("args", "msg", "levelname", "levelno", "pathname", "lineno", "funcName",
                 "threadName", "process", "created", "msecs", "taskName", "exc_info"):
        assert f" {attr}=" not in line


@pytest.mark.parametrize(("value", "rendered"), [
    ("plain", "plain"),
    ("cs-07:9402", "cs-07:9402"),
    ("", '""'),
    ("two words", '"two words"'),
    ('say "hi"', r'"say \"hi\""'),
    ("a=b", '"a=b"'),
    ("back\\slash", r'"back\\slash"'),
    ("line1\nline2", r'"line1\nline2"'),
    ("tab\there", r'"tab\there"'),
    ("bell\x07", r'"bell\x07"'),
    ("ümlaut", "ümlaut"),
])
def test_text_values_are_quoted_and_escaped_only_when_needed(value: str, rendered: str) -> None:
    assert quote_text_value(value) == rendered


def test_text_renders_none_bool_and_float_values_unambiguously() -> None:
    record = make_record("x.y", extra={"a": None, "b": True, "c": False, "d": 0.1, "e": "has space"})
    assert fmt_text(record).endswith('event=x.y a=null b=true c=false d=0.1 e="has space"')


def test_a_value_with_a_newline_keeps_the_record_on_one_line() -> None:
    record = make_record("fs.lookup", extra={"path": "/a\nb"})
    line = fmt_text(record)
    assert "\n" not in line
    assert line.endswith(r'path="/a\nb"')


def test_exception_is_an_exc_field_followed_by_the_indented_traceback() -> None:
    try:
        raise ValueError("bad block 3")
    except ValueError:
        record = make_record("cs.read_failed", level=logging.ERROR, extra={"chunk_id": 12},
                             exc_info=sys.exc_info())
    first, *rest = fmt_text(record).split("\n")
    assert first.endswith('event=cs.read_failed chunk_id=12 exc="ValueError: bad block 3"')
    assert rest[0] == "    Traceback (most recent call last):"
    assert rest[-1] == "    ValueError: bad block 3"
    assert all(line.startswith("    ") for line in rest)


def test_exception_logged_through_a_vstore_logger_is_seen_by_checklogs(expect_log) -> None:
    expect_log("cs.read_failed")
    log = logging.getLogger("vstore.chunkserver.store")
    handler = ListHandler()
    log.addHandler(handler)
    try:
        try:
            {}["missing"]
        except KeyError:
            log.exception("cs.read_failed", extra={"chunk_id": 1})
    finally:
        log.removeHandler(handler)
    assert "exc=\"KeyError: 'missing'\"" in handler.lines[0].split("\n")[0]


def test_field_named_like_a_formatter_key_is_renamed_instead_of_printed_twice() -> None:
    record = make_record("x.y", extra={"event": "other", "level": 3})
    line = fmt_text(record)
    assert line.endswith("event=x.y event_=other level_=3")
    obj = fmt_json(make_record("x.y", extra={"event": "other"}))
    assert obj["event"] == "x.y" and obj["event_"] == "other"


# -- JSON format -------------------------------------------------------------------------


def test_json_line_has_ts_level_logger_event_then_context_and_extra_fields() -> None:
    record = make_record("raft.leader_elected", extra={"term": 7, "index": 1234})
    with log_context(node="mds-1", role="mds"):
        obj = fmt_json(record)
    assert list(obj.items()) == [
        ("ts", "2026-11-23T01:02:03.456Z"), ("level", "INFO"),
        ("logger", "vstore.metadata.raft"), ("event", "raft.leader_elected"),
        ("node", "mds-1"), ("role", "mds"), ("term", 7), ("index", 1234),
    ]


def test_json_exception_is_a_summary_string_plus_the_traceback_string() -> None:
    try:
        raise RuntimeError("disk gone")
    except RuntimeError:
        record = make_record("cs.io_error", level=logging.ERROR, exc_info=sys.exc_info())
    obj = fmt_json(record)
    assert obj["exc"] == "RuntimeError: disk gone"
    assert isinstance(obj["traceback"], str)
    assert obj["traceback"].startswith("Traceback (most recent call last):")


def test_json_writes_values_it_cannot_encode_natively_as_strings() -> None:
    obj = fmt_json(make_record("x.y", extra={"blob": b"\x01\x02", "obj": ValueError("x")}))
    assert obj["blob"] == "0102"
    assert obj["obj"] == "x"


# -- context -----------------------------------------------------------------------------


def test_unset_context_fields_are_omitted_rather_than_printed_empty() -> None:
    line = fmt_text(make_record("x.y", extra={"k": 1}))
    assert line.endswith("event=x.y k=1")
    assert "node=" not in line and "role=" not in line and "request_id=" not in line


def test_log_context_restores_the_previous_values_even_when_the_block_raises() -> None:
    with log_context(node="mds-1", role="mds"):
        with pytest.raises(KeyError):
            with log_context(node="mds-2", request_id="r-1"):
                assert current_context() == {"node": "mds-2", "role": "mds", "request_id": "r-1"}
                raise KeyError
        assert current_context() == {"node": "mds-1", "role": "mds"}
    assert current_context() == {}


def test_bind_sets_fields_for_the_rest_of_the_context_and_none_unsets_them() -> None:
    def body() -> dict[str, str]:
        bind(node="cs-1", role="cs")
        bind(role=None, request_id="r-2")
        return current_context()

    assert contextvars.copy_context().run(body) == {"node": "cs-1", "request_id": "r-2"}
    assert current_context() == {}


def test_filter_defaults_apply_only_where_the_task_has_no_value_and_extra_wins() -> None:
    filt = ContextFilter({"node": "cs-9", "role": "cs"})
    record = make_record("x.y")
    with log_context(role="mds"):
        filt.filter(record)
    assert (record.node, record.role) == ("cs-9", "mds")
    explicit = make_record("x.y", extra={"node": "cs-1"})
    filt.filter(explicit)
    assert explicit.node == "cs-1"


def test_filter_rejects_unknown_default_fields() -> None:
    with pytest.raises(ValueError, match="unknown context fields"):
        ContextFilter({"nodes": "x"})


async def test_two_interleaved_asyncio_tasks_tag_their_lines_with_their_own_node(private_logger) -> None:
    log, handler = private_logger

    async def node_main(node: str, role: str) -> None:
        bind(node=node, role=role)
        log.info("node.started")
        await asyncio.sleep(0)  # let the other task run between our lines
        with log_context(request_id=f"{node}-req"):
            log.info("node.request")
            await asyncio.sleep(0)
            log.info("node.request_done")
        await asyncio.sleep(0)
        log.info("node.stopped")

    async with asyncio.TaskGroup() as tg:
        tg.create_task(node_main("mds-1", "mds"))
        tg.create_task(node_main("cs-1", "cs"))

    nodes = [r.node for r in handler.records]
    # The tasks really interleaved: strictly alternating lines.
    assert nodes == ["mds-1", "cs-1"] * 4
    for record, line in zip(handler.records, handler.lines):
        role = "mds" if record.node == "mds-1" else "cs"
        assert f"node={record.node} role={role}" in line
        if record.getMessage() in ("node.request", "node.request_done"):
            assert line.endswith(f"request_id={record.node}-req")
        else:
            assert "request_id=" not in line
    # The tasks' bind() calls did not leak into the test's own context.
    assert current_context() == {}


# -- setup_logging -----------------------------------------------------------------------


@pytest.fixture
def clean_setup() -> Iterator[None]:
    yield
    teardown_logging()


def _owned_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger("vstore").handlers if getattr(h, "_vstore_logs_owned", False)]


def test_setup_logging_twice_leaves_one_handler_and_keeps_handlers_others_added(clean_setup) -> None:
    vstore_logger = logging.getLogger("vstore")
    others = [h for h in vstore_logger.handlers if h not in _owned_handlers()]
    root_handlers = list(logging.getLogger().handlers)
    first, second = io.StringIO(), io.StringIO()

    setup_logging("info", "text", stream=first, node="mds-1", role="mds")
    setup_logging("info", "text", stream=second, node="mds-1", role="mds")
    logging.getLogger("vstore.metadata.raft").info("raft.leader_elected", extra={"term": 7})

    assert len(_owned_handlers()) == 1
    assert [h for h in vstore_logger.handlers if h not in _owned_handlers()] == others
    assert logging.getLogger().handlers == root_handlers
    assert first.getvalue() == ""
    assert re.fullmatch(_ISO_RE + r" INFO vstore\.metadata\.raft event=raft\.leader_elected "
                        r"node=mds-1 role=mds term=7\n", second.getvalue())


def test_setup_logging_keeps_propagating_so_caplog_still_sees_records(clean_setup, caplog) -> None:
    setup_logging("debug", stream=io.StringIO())
    with caplog.at_level(logging.DEBUG, logger="vstore"):
        logging.getLogger("vstore.net").debug("net.connected", extra={"peer": "cs-2"})
    assert [r.getMessage() for r in caplog.records] == ["net.connected"]
    assert caplog.records[0].peer == "cs-2"


def test_setup_logging_level_filters_lower_records(clean_setup) -> None:
    out = io.StringIO()
    setup_logging("warning", stream=out)
    logging.getLogger("vstore.net").info("net.connected")
    assert out.getvalue() == ""


def test_setup_logging_writes_json_lines_to_a_file(clean_setup, tmp_path) -> None:
    path = tmp_path / "node.log"
    setup_logging("info", "json", file=str(path), node="cs-7", role="cs")
    log = logging.getLogger("vstore.chunkserver.scrubber")
    log.info("scrub.started", extra={"chunks": 3})
    with log_context(node="cs-8"):
        log.info("scrub.finished")
    teardown_logging()  # closes the file
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["event"] == "scrub.started"
    assert (first["node"], first["role"], first["chunks"]) == ("cs-7", "cs", 3)
    assert re.fullmatch(_ISO_RE, first["ts"])
    assert (second["event"], second["node"]) == ("scrub.finished", "cs-8")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"level": "verbose"}, "log level 'verbose'"),
    ({"fmt": "xml"}, "log format 'xml'"),
])
def test_setup_logging_rejects_unknown_level_or_format(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        setup_logging(**kwargs)
    assert _owned_handlers() == []


def test_setup_logging_accepts_level_names_in_any_case(clean_setup) -> None:
    setup_logging("DEBUG", stream=io.StringIO())
    assert logging.getLogger("vstore").level == logging.DEBUG


# -- rate limiting -----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_first_warning_is_logged_and_repeats_within_the_interval_are_suppressed(private_logger) -> None:
    log, handler = private_logger
    clock = FakeClock()
    limited = RateLimitedLogger(log, interval_s=60, clock=clock)
    assert limited.warning("cs.slow_disk", key="cs-1", extra={"cs_id": "cs-1"}) is True
    for _ in range(37):
        clock.now_s += 1
        assert limited.warning("cs.slow_disk", key="cs-1", extra={"cs_id": "cs-1"}) is False
    assert len(handler.records) == 1
    assert handler.lines[0].endswith("event=cs.slow_disk cs_id=cs-1")
    assert handler.records[0].levelno == logging.WARNING


def test_next_warning_after_the_interval_carries_the_suppressed_count(private_logger) -> None:
    log, handler = private_logger
    clock = FakeClock()
    limited = RateLimitedLogger(log, interval_s=60, clock=clock)
    limited.warning("cs.slow_disk", key="cs-1")
    for _ in range(37):
        limited.warning("cs.slow_disk", key="cs-1")
    clock.now_s += 60
    assert limited.warning("cs.slow_disk", key="cs-1", extra={"cs_id": "cs-1"}) is True
    assert handler.lines[1].endswith("event=cs.slow_disk cs_id=cs-1 suppressed=37 suppressed_s=60.0")
    # The count restarts: the next line after another quiet interval has no count.
    clock.now_s += 61
    limited.warning("cs.slow_disk", key="cs-1")
    assert "suppressed" not in handler.lines[2]
    assert len(handler.records) == 3


def test_different_keys_and_events_are_limited_separately(private_logger) -> None:
    log, handler = private_logger
    limited = RateLimitedLogger(log, interval_s=60, clock=FakeClock())
    assert limited.warning("cs.unreachable", key="cs-1")
    assert limited.warning("cs.unreachable", key="cs-2")
    assert limited.warning("cs.slow_disk", key="cs-1")
    assert not limited.warning("cs.unreachable", key="cs-1")
    assert limited.error("cs.unreachable")  # key=None is its own key
    assert [r.getMessage() for r in handler.records] == [
        "cs.unreachable", "cs.unreachable", "cs.slow_disk", "cs.unreachable"]


def test_key_cap_forgets_the_least_recently_seen_key(private_logger) -> None:
    log, handler = private_logger
    clock = FakeClock()
    limited = RateLimitedLogger(log, interval_s=60, clock=clock, max_keys=2)
    limited.warning("e", key="a")
    limited.warning("e", key="b")
    limited.warning("e", key="a")  # suppressed; "a" is now the most recently seen
    limited.warning("e", key="c")  # evicts "b"
    assert len(limited) == 2
    assert not limited.warning("e", key="a")  # still remembered
    assert limited.warning("e", key="b")  # forgotten, so logged as a first occurrence
    assert len(handler.records) == 4


def test_records_below_the_logger_level_are_neither_logged_nor_counted(private_logger) -> None:
    log, handler = private_logger
    log.setLevel(logging.WARNING)
    clock = FakeClock()
    limited = RateLimitedLogger(log, interval_s=60, clock=clock)
    assert not limited.info("x.y")
    assert len(limited) == 0
    assert handler.records == []


def test_rate_limited_record_names_the_caller_as_its_origin(private_logger) -> None:
    log, handler = private_logger
    RateLimitedLogger(log, clock=FakeClock()).warning("x.y")
    assert handler.records[0].funcName == "test_rate_limited_record_names_the_caller_as_its_origin"


@pytest.mark.parametrize("kwargs", [{"interval_s": 0}, {"max_keys": 0}])
def test_rate_limiter_rejects_nonsense_limits(kwargs) -> None:
    with pytest.raises(ValueError):
        RateLimitedLogger(logging.getLogger("vstoretest.x"), **kwargs)


def test_module_imports_only_the_stdlib() -> None:
    tree = ast.parse(open(logs.__file__).read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
