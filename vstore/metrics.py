"""The per-node Prometheus metric registry, on top of ``prometheus_client``.

This module owns:

* :class:`Metrics`, one registry per node. Components ask it for their counters, gauges
  and histograms by name; asking twice returns the same object, so two components that
  count the same thing share one series instead of exposing two.
* The naming rule ``vstore_<subsystem>_<what>_<unit>`` (STYLE.md §6), enforced when a
  metric is created, not in review: a misnamed metric would otherwise become a dashboard
  and alert dependency that can only be renamed by breaking both.
* The two read paths over the same numbers: :meth:`Metrics.exposition` (Prometheus text
  format 0.0.4, for ``/metrics``) and :meth:`Metrics.snapshot` (a plain dict, for the JSON
  API and ``vstore status``), so the dashboard can never disagree with Prometheus.
* :func:`timer`, which times a block into a histogram with an injectable clock.

Rules:

1. It imports only the stdlib and ``prometheus_client``, never another vstore module.
2. It never uses ``prometheus_client``'s global default ``REGISTRY`` (nor the module-level
   ``start_http_server``/``generate_latest()`` defaults that read it): the in-process test
   cluster runs several nodes in one interpreter, and a shared registry would both mix
   their numbers and raise on the second node's registration of the same name.
3. It does not serve HTTP; ``vstore/admin`` does, using :meth:`Metrics.exposition` and
   :data:`CONTENT_TYPE`.
4. It does not change ``prometheus_client``'s process-wide switches (e.g.
   ``disable_created_metrics``); :meth:`Metrics.snapshot` skips the ``_created`` series
   instead.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Union

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = [
    "CONTENT_TYPE",
    "COUNTER_SUFFIX",
    "GAUGE_UNITS",
    "HISTOGRAM_UNITS",
    "Metric",
    "Metrics",
    "check_metric_name",
    "timer",
]

#: Content type of :meth:`Metrics.exposition`. Spelled out rather than taken from
#: ``prometheus_client.CONTENT_TYPE_LATEST``, which newer releases point at format 1.0.0;
#: the bytes we emit are 0.0.4 (our names are all legacy-valid, so no UTF-8 escaping
#: applies), and the header must say what the body is.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Metric = Union[Counter, Gauge, Histogram]

#: Counters, and only counters, end in ``_total`` (Prometheus convention), optionally
#: preceded by a base unit: ``vstore_cs_read_bytes_total``, ``vstore_rpc_requests_total``.
COUNTER_SUFFIX = "total"

#: Last name part allowed for a gauge. Base units only (``seconds``, ``bytes``, ``ratio``,
#: as Prometheus recommends) plus the countable things vstore tracks and the ``info``/
#: ``state`` conventions for label-carrying gauges whose value is 1 or an enum.
GAUGE_UNITS: frozenset[str] = frozenset({
    "seconds", "bytes", "ratio", "count", "info", "entries", "chunks", "nodes",
    "connections", "requests", "state", "index", "term",
})

#: Last name part allowed for a histogram: only things with a meaningful distribution.
#: ``count`` is excluded because the histogram's own ``_count`` series would then be
#: ``..._count_count``; ``info``/``state``/``index``/``term`` are not distributions.
HISTOGRAM_UNITS: frozenset[str] = frozenset({
    "seconds", "bytes", "ratio", "entries", "chunks", "nodes", "connections", "requests",
})

# Non-base units and near-misses, each with the fix to suggest. Checked on every part so
# "vstore_rpc_latency_ms_total" is caught as well as "vstore_rpc_latency_ms".
_NON_BASE_UNITS: dict[str, str] = {
    **dict.fromkeys(("ms", "msec", "msecs", "millis", "milliseconds", "us", "usec",
                     "microseconds", "ns", "nanoseconds", "sec", "secs", "second",
                     "minutes", "mins", "hours"), "seconds"),
    **dict.fromkeys(("byte", "kb", "mb", "gb", "tb", "kib", "mib", "gib", "tib",
                     "kilobytes", "megabytes", "gigabytes"), "bytes"),
    **dict.fromkeys(("percent", "pct"), "ratio"),
}

_NAME_RE = re.compile(r"vstore(?:_[a-z0-9]+){3,}")
_LABEL_RE = re.compile(r"[a-z][a-z0-9_]*")

_RULE = ("metric names must be vstore_<subsystem>_<what>_<unit>: lowercase snake_case, "
         "starting with 'vstore_', at least 3 parts after it, ending in a unit")


def check_metric_name(name: str, kind: str) -> None:
    """Raise ValueError unless ``name`` follows the naming rule for a metric of ``kind``
    (``"counter"``, ``"gauge"`` or ``"histogram"``). The message states the rule and,
    for a non-base unit, the base unit to use instead. Pure."""
    if kind not in ("counter", "gauge", "histogram"):
        raise ValueError(f"unknown metric kind {kind!r}")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"metric name {name!r}: {_RULE}")
    parts = name.split("_")[1:]
    for part in parts:
        if part in _NON_BASE_UNITS:
            raise ValueError(f"metric name {name!r}: '{part}' is not a base unit, use "
                             f"'_{_NON_BASE_UNITS[part]}' ({_RULE})")
    unit = parts[-1]
    if kind == "counter":
        if unit != COUNTER_SUFFIX:
            raise ValueError(f"metric name {name!r}: a counter must end in '_total' ({_RULE})")
        return
    if unit == COUNTER_SUFFIX:
        raise ValueError(f"metric name {name!r}: only counters may end in '_total' ({_RULE})")
    allowed = GAUGE_UNITS if kind == "gauge" else HISTOGRAM_UNITS
    if unit not in allowed:
        raise ValueError(f"metric name {name!r}: a {kind} must end in one of "
                         f"{', '.join('_' + u for u in sorted(allowed))} ({_RULE})")


def _check_labels(name: str, labels: Sequence[str]) -> tuple[str, ...]:
    # A bare string is a sequence of one-letter labels; catch it instead of exposing
    # labels o, p.
    if isinstance(labels, str):
        raise TypeError(f"metric {name!r}: labels must be a tuple of names, not the string {labels!r}")
    out = tuple(labels)
    for label in out:
        if not isinstance(label, str) or not _LABEL_RE.fullmatch(label):
            raise ValueError(f"metric {name!r}: label {label!r} must be lowercase snake_case")
    if len(set(out)) != len(out):
        raise ValueError(f"metric {name!r}: duplicate label in {out}")
    return out


class Metrics:
    """A node's metrics: its own ``CollectorRegistry`` and the metrics registered in it.

    One instance per node; instances share nothing, so several nodes in one process
    (the in-process test cluster) each count their own. Thread-safe.
    """

    def __init__(self) -> None:
        # auto_describe makes the registry ask new collectors for their names at
        # registration, so a name clash is reported there, not at the first scrape.
        self._registry = CollectorRegistry(auto_describe=True)
        # name -> (kind, labels, buckets or None, metric); the shape a second request for
        # the same name must match.
        self._metrics: dict[str, tuple[str, tuple[str, ...], tuple[float, ...] | None, Metric]] = {}
        self._lock = threading.Lock()

    @property
    def registry(self) -> CollectorRegistry:
        """The underlying registry, for code that needs ``prometheus_client`` directly."""
        return self._registry

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        """The counter ``name`` (which must end in ``_total``), created on first request.

        The exposed sample is named exactly ``name``. (``prometheus_client`` strips the
        ``_total`` and adds it back to the sample, plus a ``<base>_created`` series.)
        Raises ValueError if the name breaks the naming rule, or if ``name`` already
        exists with another type or other labels; the doc string of a later request is
        ignored.
        """
        return self._get("counter", name, doc, labels, None)  # type: ignore[return-value]

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        """The gauge ``name``, created on first request. Same contract as :meth:`counter`."""
        return self._get("gauge", name, doc, labels, None)  # type: ignore[return-value]

    def histogram(self, name: str, doc: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS) -> Histogram:
        """The histogram ``name``, created on first request.

        ``buckets`` are upper bounds in the metric's unit; the default suits latencies in
        seconds (5 ms .. 10 s), so a ``_bytes`` histogram must pass its own. A later
        request must give the same buckets: buckets are part of the series' identity,
        and silently returning other bounds would make the caller's assumptions wrong.
        Same contract as :meth:`counter` otherwise.
        """
        return self._get("histogram", name, doc, labels, tuple(float(b) for b in buckets))  # type: ignore[return-value]

    def _get(self, kind: str, name: str, doc: str, labels: Sequence[str],
             buckets: tuple[float, ...] | None) -> Metric:
        check_metric_name(name, kind)
        label_names = _check_labels(name, labels)
        with self._lock:
            existing = self._metrics.get(name)
            if existing is not None:
                old_kind, old_labels, old_buckets, metric = existing
                if old_kind != kind:
                    raise ValueError(f"metric {name!r} already registered as a {old_kind}, "
                                     f"requested as a {kind}")
                if old_labels != label_names:
                    raise ValueError(f"metric {name!r} already registered with labels "
                                     f"{old_labels}, requested with {label_names}")
                if kind == "histogram" and _normalise(old_buckets) != _normalise(buckets):
                    raise ValueError(f"metric {name!r} already registered with buckets "
                                     f"{old_buckets}, requested with {buckets}")
                return metric
            try:
                if kind == "counter":
                    metric = Counter(name, doc, label_names, registry=self._registry)
                elif kind == "gauge":
                    metric = Gauge(name, doc, label_names, registry=self._registry)
                else:
                    metric = Histogram(name, doc, label_names, registry=self._registry,
                                       buckets=buckets)
            except ValueError as e:
                # E.g. gauge vstore_x_y_bytes next to counter vstore_x_y_bytes_total,
                # whose family is also called vstore_x_y_bytes.
                raise ValueError(f"metric {name!r} ({kind}) clashes with an existing "
                                 f"series: {e}") from e
            self._metrics[name] = (kind, label_names, buckets, metric)
            return metric

    def exposition(self) -> bytes:
        """All metrics of this node in the Prometheus text format 0.0.4 (:data:`CONTENT_TYPE`)."""
        return generate_latest(self._registry)

    def snapshot(self) -> dict[str, float]:
        """Current value of every sample, keyed ``name{label="value",...}``.

        Keys are the names Prometheus sees (``vstore_cs_read_bytes_total``,
        ``vstore_rpc_latency_seconds_bucket{op="read",le="0.005"}``,
        ``..._count``, ``..._sum``), label values escaped as in the exposition, labels
        in declaration order with ``le`` last. Series without labels are keyed by bare
        name. ``_created`` timestamps are left out: they are not measurements. A labelled
        metric appears only once a child has been created with ``.labels(...)``.
        """
        out: dict[str, float] = {}
        for family in self._registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                out[_sample_key(sample.name, sample.labels)] = float(sample.value)
        return out


def _normalise(buckets: tuple[float, ...] | None) -> tuple[float, ...] | None:
    # prometheus_client appends +Inf when missing; compare the bounds it will actually use.
    if buckets is None or (buckets and buckets[-1] == float("inf")):
        return buckets
    return buckets + (float("inf"),)


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _sample_key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}}"


@contextmanager
def timer(histogram: Histogram, *, clock: Callable[[], float] = time.perf_counter) -> Iterator[None]:
    """Observe the duration of the ``with`` block, in seconds, into ``histogram``.

    ``histogram`` is a histogram without labels or a labelled child
    (``h.labels(op="read")``). ``clock`` returns seconds; tests pass a fake clock, the
    default is ``time.perf_counter`` (monotonic and high-resolution, where
    ``time.time`` could step backwards). The duration is observed even when the block
    raises, so failed operations show in the latency too; a caller that wants them apart
    uses a ``status`` label.
    """
    start_s = clock()
    try:
        yield
    finally:
        histogram.observe(clock() - start_s)
