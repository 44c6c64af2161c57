"""Unit tests for vstore.metrics: naming rule, registration, exposition, snapshot, timer."""

from __future__ import annotations

import ast
import sys

import pytest
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vstore import metrics as metrics_module
from vstore.metrics import CONTENT_TYPE, Metrics, check_metric_name, timer


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 500.0

    def __call__(self) -> float:
        return self.now_s


def parsed_samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# -- naming rule -------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), [
    ("counter", "vstore_cs_read_bytes_total"),
    ("counter", "vstore_rpc_requests_total"),
    ("counter", "vstore_cs_checksum_errors_total"),
    ("gauge", "vstore_cs_free_bytes"),
    ("gauge", "vstore_raft_commit_index"),
    ("gauge", "vstore_raft_current_term"),
    ("gauge", "vstore_mds_online_nodes"),
    ("gauge", "vstore_cs_disk_used_ratio"),
    ("gauge", "vstore_mds_build_info"),
    ("gauge", "vstore_repair_queue_chunks"),
    ("histogram", "vstore_rpc_call_seconds"),
    ("histogram", "vstore_cs_write_size_bytes"),
    ("histogram", "vstore_raft_append_batch_entries"),
    ("histogram", "vstore_s3_p99_latency_seconds"),
])
def test_names_following_the_rule_are_accepted(kind: str, name: str) -> None:
    check_metric_name(name, kind)
    getattr(Metrics(), kind)(name, "doc")


@pytest.mark.parametrize(("kind", "name", "reason"), [
    ("gauge", "cs_free_bytes", "starting with 'vstore_'"),
    ("gauge", "vstorex_cs_free_bytes", "starting with 'vstore_'"),
    ("gauge", "vstore_CS_free_bytes", "lowercase snake_case"),
    ("gauge", "vstore_cs-free_bytes", "lowercase snake_case"),
    ("gauge", "vstore_cs__free_bytes", "lowercase snake_case"),
    ("gauge", "vstore_cs_free_bytes_", "lowercase snake_case"),
    ("gauge", "vstore_free_bytes", "at least 3 parts"),
    ("counter", "vstore_reads_total", "at least 3 parts"),
    ("gauge", "vstore_cs_free_space", "a gauge must end in one of"),
    ("gauge", "vstore_rpc_latency_ms", "use '_seconds'"),
    ("histogram", "vstore_rpc_latency_milliseconds", "use '_seconds'"),
    ("counter", "vstore_cs_read_mb_total", "use '_bytes'"),
    ("gauge", "vstore_cs_disk_used_percent", "use '_ratio'"),
    ("counter", "vstore_cs_read_bytes", "a counter must end in '_total'"),
    ("gauge", "vstore_cs_read_bytes_total", "only counters may end in '_total'"),
    ("histogram", "vstore_rpc_calls_total", "only counters may end in '_total'"),
    ("histogram", "vstore_cs_chunk_count", "a histogram must end in one of"),
    ("histogram", "vstore_mds_build_info", "a histogram must end in one of"),
])
def test_names_breaking_the_rule_are_rejected_with_the_rule_in_the_message(
        kind: str, name: str, reason: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        getattr(Metrics(), kind)(name, "doc")
    message = str(excinfo.value)
    assert reason in message
    assert "vstore_<subsystem>_<what>_<unit>" in message
    assert repr(name) in message


def test_labels_must_be_a_tuple_of_snake_case_names() -> None:
    m = Metrics()
    with pytest.raises(TypeError, match="not the string"):
        m.counter("vstore_rpc_requests_total", "doc", labels="op")
    with pytest.raises(ValueError, match="lowercase snake_case"):
        m.counter("vstore_rpc_requests_total", "doc", labels=("Op",))
    with pytest.raises(ValueError, match="duplicate label"):
        m.counter("vstore_rpc_requests_total", "doc", labels=("op", "op"))


# -- registration ------------------------------------------------------------------------


def test_asking_twice_for_the_same_name_returns_the_same_object() -> None:
    m = Metrics()
    c = m.counter("vstore_rpc_requests_total", "RPCs", ("op",))
    assert isinstance(c, Counter)
    assert m.counter("vstore_rpc_requests_total", "RPCs handled", ["op"]) is c
    g = m.gauge("vstore_cs_free_bytes", "free")
    assert isinstance(g, Gauge) and m.gauge("vstore_cs_free_bytes", "free") is g
    h = m.histogram("vstore_rpc_call_seconds", "latency", buckets=(0.1, 1))
    assert isinstance(h, Histogram)
    assert m.histogram("vstore_rpc_call_seconds", "latency", buckets=(0.1, 1.0, float("inf"))) is h


def test_an_existing_name_requested_with_another_type_labels_or_buckets_raises() -> None:
    m = Metrics()
    m.counter("vstore_rpc_requests_total", "RPCs", ("op",))
    m.histogram("vstore_rpc_call_seconds", "latency", buckets=(0.1, 1))
    m.gauge("vstore_cs_free_bytes", "free")
    with pytest.raises(ValueError, match="already registered with labels"):
        m.counter("vstore_rpc_requests_total", "RPCs", ("op", "peer"))
    with pytest.raises(ValueError, match="already registered with labels"):
        m.counter("vstore_rpc_requests_total", "RPCs")
    with pytest.raises(ValueError, match="already registered with buckets"):
        m.histogram("vstore_rpc_call_seconds", "latency", buckets=(0.5,))
    with pytest.raises(ValueError, match="already registered as a gauge"):
        m.histogram("vstore_cs_free_bytes", "free")


def test_a_gauge_clashing_with_a_counters_family_name_raises() -> None:
    m = Metrics()
    m.counter("vstore_cs_read_bytes_total", "bytes read")
    # The counter's family is exposed as vstore_cs_read_bytes (TYPE line), so a gauge of
    # that name would make the exposition ambiguous.
    with pytest.raises(ValueError, match="clashes with an existing series"):
        m.gauge("vstore_cs_read_bytes", "bytes")


def test_two_instances_are_independent_and_the_global_registry_stays_empty() -> None:
    a, b = Metrics(), Metrics()
    ca = a.counter("vstore_rpc_requests_total", "RPCs")
    cb = b.counter("vstore_rpc_requests_total", "RPCs")
    assert ca is not cb
    ca.inc(3)
    assert a.snapshot()["vstore_rpc_requests_total"] == 3
    assert b.snapshot()["vstore_rpc_requests_total"] == 0
    assert b"vstore_" not in generate_latest(REGISTRY)


# -- exposition and snapshot -------------------------------------------------------------


def _populated() -> Metrics:
    m = Metrics()
    m.counter("vstore_cs_read_bytes_total", "Bytes read from chunk files", ("cs_id",)) \
        .labels(cs_id="cs-1").inc(4096)
    m.gauge("vstore_cs_free_bytes", "Free bytes on the data disk").set(1e12)
    h = m.histogram("vstore_rpc_call_seconds", "RPC latency", ("op",), buckets=(0.01, 0.1, 1))
    h.labels(op="read").observe(0.05)
    h.labels(op="read").observe(0.5)
    m.gauge("vstore_fs_open_path_entries", "odd label values", ("path",)) \
        .labels(path='a "b"\\c\nd').set(2)
    return m


def test_exposition_parses_as_prometheus_text_and_contains_the_values() -> None:
    m = _populated()
    families = {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}
    # prometheus_client names the counter family without _total; the sample keeps it.
    assert families["vstore_cs_read_bytes"].type == "counter"
    assert families["vstore_cs_free_bytes"].type == "gauge"
    assert families["vstore_rpc_call_seconds"].type == "histogram"
    assert families["vstore_cs_free_bytes"].documentation == "Free bytes on the data disk"
    samples = parsed_samples(m)
    assert samples[("vstore_cs_read_bytes_total", (("cs_id", "cs-1"),))] == 4096
    assert samples[("vstore_cs_free_bytes", ())] == 1e12
    assert samples[("vstore_rpc_call_seconds_bucket", (("le", "0.1"), ("op", "read")))] == 1
    assert samples[("vstore_rpc_call_seconds_bucket", (("le", "+Inf"), ("op", "read")))] == 2
    assert samples[("vstore_rpc_call_seconds_count", (("op", "read"),))] == 2
    assert samples[("vstore_rpc_call_seconds_sum", (("op", "read"),))] == pytest.approx(0.55)
    assert samples[("vstore_fs_open_path_entries", (("path", 'a "b"\\c\nd'),))] == 2


def test_exposition_content_type_is_text_format_0_0_4() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_snapshot_keys_samples_by_name_and_labels() -> None:
    snap = _populated().snapshot()
    assert snap['vstore_cs_read_bytes_total{cs_id="cs-1"}'] == 4096
    assert snap["vstore_cs_free_bytes"] == 1e12
    assert snap['vstore_rpc_call_seconds_bucket{op="read",le="0.01"}'] == 0
    assert snap['vstore_rpc_call_seconds_bucket{op="read",le="+Inf"}'] == 2
    assert snap['vstore_rpc_call_seconds_count{op="read"}'] == 2
    assert snap['vstore_rpc_call_seconds_sum{op="read"}'] == pytest.approx(0.55)
    assert snap['vstore_fs_open_path_entries{path="a \\"b\\"\\\\c\\nd"}'] == 2
    assert not [k for k in snap if "_created" in k]
    assert all(isinstance(v, float) for v in snap.values())


def test_snapshot_and_exposition_report_the_same_numbers() -> None:
    m = _populated()
    exposed = {k: v for k, v in parsed_samples(m).items() if not k[0].endswith("_created")}
    # Snapshot keys are written like exposition sample lines, so the same parser reads
    # them back; that also checks their label escaping.
    snapshot_text = "".join(f"{key} {value!r}\n" for key, value in m.snapshot().items())
    from_snapshot = {}
    for family in text_string_to_metric_families(snapshot_text):
        for s in family.samples:
            from_snapshot[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert from_snapshot == exposed
    assert len(from_snapshot) == len(m.snapshot())


def test_an_unused_labelled_metric_has_no_samples_yet() -> None:
    m = Metrics()
    m.counter("vstore_rpc_requests_total", "RPCs", ("op",))
    assert m.snapshot() == {}


# -- timer -------------------------------------------------------------------------------


def test_timer_observes_the_block_duration_from_the_injected_clock() -> None:
    m = Metrics()
    h = m.histogram("vstore_rpc_call_seconds", "latency", buckets=(0.1, 1))
    clock = FakeClock()
    with timer(h, clock=clock):
        clock.now_s += 0.25
    snap = m.snapshot()
    assert snap["vstore_rpc_call_seconds_count"] == 1
    assert snap["vstore_rpc_call_seconds_sum"] == 0.25
    assert snap['vstore_rpc_call_seconds_bucket{le="0.1"}'] == 0
    assert snap['vstore_rpc_call_seconds_bucket{le="1.0"}'] == 1


def test_timer_observes_a_labelled_child_and_also_when_the_block_raises() -> None:
    m = Metrics()
    h = m.histogram("vstore_rpc_call_seconds", "latency", ("op",))
    clock = FakeClock()
    with pytest.raises(OSError):
        with timer(h.labels(op="write"), clock=clock):
            clock.now_s += 2.0
            raise OSError("disk gone")
    snap = m.snapshot()
    assert snap['vstore_rpc_call_seconds_count{op="write"}'] == 1
    assert snap['vstore_rpc_call_seconds_sum{op="write"}'] == 2.0


def test_module_imports_only_the_stdlib_and_prometheus_client() -> None:
    tree = ast.parse(open(metrics_module.__file__).read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported <= set(sys.stdlib_module_names) | {"__future__", "prometheus_client"}
