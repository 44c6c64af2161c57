"""Node configuration: one TOML file per node, read once into frozen dataclasses.

Owns the file layout below, every key's type, default, unit and "restart or reload" marker,
the validation rules, and the commented template that ``vstore config template`` prints.
It must not do I/O beyond reading the one file: it does not resolve the machine's hostname,
open sockets, read the secret file or create ``data_dir``. The caller does those at start-up
and reports its own errors, because only the caller knows whether it is starting or merely
checking a file.

File layout::

    [node]         who this node is: id, role, listen, host, rack, data_dir
    [cluster]      the cluster it belongs to: name, id, mds, secret_file
    [net]          limits and deadlines of every TCP connection
    [tls]          optional TLS around the cluster-secret handshake
    [log]          level, format, destination
    [mds]          role "mds" only: admin listener, Raft timing, CS liveness, LMDB map size
    [chunkserver]  role "cs" only: heartbeats, reserved space, scrubbing, open chunk limit

Every section may be left out except [node] and [cluster], which hold required keys. The
role's own section is optional (its defaults apply); the other role's section is an error,
so a key that would silently do nothing is never accepted.

Rules:

1. **Validated once, here.** ``load_config`` returns a NodeConfig in which every value has
   its declared type and satisfies its rules, or raises ConfigError. Nothing downstream
   re-checks, and cores receive plain values (``cfg.mds.election_timeout_ms``), never the
   NodeConfig itself.
2. **One key, one place.** A key is a dataclass field declared with ``_setting(...)``: its
   annotation is its type, its metadata carries the one-line "why", the unit, the restart
   or reload marker, the range, an example value when it is required, and an optional
   check. The generic loader, the template and the tests all walk the fields, so adding a
   key means adding one field (plus a ``_cross_check`` line if it constrains another key).
3. **Every error is one line naming the file, the key path and the fix**, and bad input
   never produces a traceback. Two shapes (STYLE.md §5)::

       cs.toml: [chunkserver] scrub_rate_mb_s: unknown key (did you mean scrub_rate_bytes_per_s?)
       mds.toml: [mds] election_timeout_ms = 50 must be > 3 × heartbeat_interval_ms (= 100)

   The first (``FILE: KEY: problem``) is for unknown keys, missing keys and wrong types; the
   second (``FILE: KEY = VALUE rule``) is for a value that breaks a rule. In both,
   ``ConfigError.key`` holds the bare key path (``[mds] election_timeout_ms``).
4. **Units go last in names** (``_ms``, ``_s``, ``_bytes``, ``_bytes_per_s``) so a value's
   unit is never in doubt in the file, the code or the dashboard (STYLE.md §3).

Types the loader understands (from the field annotations): ``str``, ``int`` (a TOML bool is
not an int), ``bool``, ``Literal["a", "b"]`` (a string from a fixed set), ``Address``
(a ``"HOST:PORT"`` string) and ``tuple[Address, ...]`` (an array of them; a tuple rather
than a list so the frozen config is immutable all the way down).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import tomllib
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from vstore.errors import ConfigError, UsageError

__all__ = [
    "Address", "ChunkserverSection", "ClusterSection", "LogSection", "MdsSection", "NetSection", "NodeConfig",
    "NodeSection", "TlsSection", "changed_keys", "load_config", "parse_config", "render_template",
]

NodeRole = Literal["mds", "cs"]
FrameAuthName = Literal["hmac", "none"]     # values of vstore.wire.FrameAuth
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: A config file is a few kilobytes. Reading stops here so that pointing --config at a disk
#: image or a log by mistake gives an error at once instead of reading gigabytes into memory.
_MAX_FILE_BYTES = 1 * MiB

# ---- addresses ----------------------------------------------------------------------------

_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,6}")  # more than 6 digits is out of range anyway; no int() of 5000 digits


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP endpoint: an IPv4 address, a hostname or an IPv6 address (without brackets), and a port.

    ``str()`` gives the ``HOST:PORT`` form back, with brackets around IPv6, so it can be
    written into a config file, a log line or a ``--listen`` argument unchanged.
    """

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``"HOST:PORT"``: ``10.0.0.7:9400``, ``node7.example:9400`` or ``[::1]:9400``.

        Raises ValueError whose message says what is wrong in words an operator can act on.
        Hostnames are checked for form only (RFC 1123 labels), never resolved.
        """
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise ValueError('has "[" without a closing "]"')
            host, rest = text[1:end], text[end + 1:]
            if not rest.startswith(":"):
                raise ValueError('needs ":PORT" after the bracketed IPv6 address, e.g. "[::1]:9400"')
            port_text = rest[1:]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f'"[{host}]" is not an IPv6 address') from None
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ValueError('has no port (expected HOST:PORT, e.g. "10.0.0.7:9400")')
            if ":" in host:
                raise ValueError('puts an IPv6 address without brackets (write e.g. "[::1]:9400")')
            if not host:
                raise ValueError('has no host before ":" (use "0.0.0.0:PORT" to listen on every address)')
            problem = _host_problem(host)
            if problem:
                raise ValueError(problem)
        if not _PORT.fullmatch(port_text):
            raise ValueError(f'has port "{port_text}", which is not a number')
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"has port {port}, outside 1-65535")
        return cls(host, port)


def _host_problem(host: str) -> str | None:
    labels = host.split(".")
    if all(label.isdigit() for label in labels):
        # All-numeric names are meant as IPv4; "10.0.0.256" must not pass as a hostname.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f'has host "{host}", which is not a valid IPv4 address'
        return None
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return (f'has host "{host}", which is neither an IPv4 address nor a hostname '
                "(letters, digits and '-' in dot-separated labels)")
    return None


# ---- declaring keys -------------------------------------------------------------------------

_NO_EXAMPLE = object()
_ABSENT = object()
Check = Callable[[Any], "str | None"]


def _setting(default: Any = dataclasses.MISSING, *, doc: str, unit: str = "", apply: str = "restart",
             min: int | None = None, max: int | None = None, check: Check | None = None,
             example: Any = _NO_EXAMPLE) -> Any:
    """Declare one config key. Everything the loader, the template and the tests need is here.

    doc      one line saying why the key exists (what changes when you change it)
    unit     the unit of the value, repeated from the name's suffix for the template
    apply    "restart" (read once at start) or "reload" (the service re-reads it on SIGHUP)
    min/max  inclusive bounds for ints; the upper bounds catch unit mix-ups (ms typed as µs)
    check    value -> problem text ("must be ...") or None, for rules the type cannot say
    example  for a required key (no default): the value the template shows; a dict maps
             role -> value where the example differs by role
    """
    metadata = {"doc": doc, "unit": unit, "apply": apply, "min": min, "max": max, "check": check,
                "example": example}
    return field(default=default, metadata=metadata)


def _is_name(value: str) -> str | None:
    if 1 <= len(value) <= 64 and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        return None
    return "must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"


def _is_label(value: str) -> str | None:
    # Labels are compared between nodes for placement; "" means "not labelled".
    if value == "" or (len(value) <= 253 and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value)):
        return None
    return "must be empty or up to 253 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"


def _is_abs_path(value: str) -> str | None:
    # Relative paths would depend on the directory the service happens to start in.
    if value.startswith("/") and "\x00" not in value:
        return None
    return "must be an absolute path"


def _is_abs_path_or_empty(value: str) -> str | None:
    return None if value == "" else _is_abs_path(value)


def _is_address_or_empty(value: str) -> str | None:
    if value == "":
        return None
    try:
        Address.parse(value)
    except ValueError as exc:
        return f"{exc} (HOST:PORT, or empty)"
    return None


def _is_uuid(value: str) -> str | None:
    # Lower-case canonical form only: the id is compared byte for byte in every handshake,
    # so "ABC…" and "abc…" must not both be accepted as the same cluster.
    if re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", value):
        return None
    return 'must be a lower-case UUID like "00000000-0000-0000-0000-000000000000" (printed by vstore mkfs)'


# ---- sections -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSection:
    """[node]: who this node is."""

    id: str = _setting(doc="Stable name of this node, unique in the cluster; never reuse an id",
                       check=_is_name, example={"mds": "mds-1", "cs": "cs-1"})
    role: NodeRole = _setting(doc="What this process serves: mds (metadata, Raft) or cs (chunk data)",
                              example={"mds": "mds", "cs": "cs"})
    listen: Address = _setting(doc="TCP address this node serves and advertises to peers (HOST:PORT)",
                               example={"mds": "127.0.0.1:9400", "cs": "127.0.0.1:9402"})
    host: str = _setting("", doc="Failure domain: replicas never share a host; empty = this machine's hostname",
                         check=_is_label)
    rack: str = _setting("", doc="Larger failure domain: replicas spread over racks when labelled; empty = none",
                         check=_is_label)
    data_dir: str = _setting(doc="Directory that holds this node's state (Raft log or chunk files); absolute",
                             check=_is_abs_path,
                             example={"mds": "/var/lib/vstore/mds-1", "cs": "/var/lib/vstore/cs-1"})
    # A key in the file, not only the environment variable, so that a production config
    # (which never says true) refuses to run with injected failures even if someone
    # exports VSTORE_FAILPOINTS by mistake (vstore/failpoints.py).
    failpoints: bool = _setting(False, doc="Test-only failure injection: a node refuses to start with "
                                           "VSTORE_FAILPOINTS set unless this is true")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSection:
    """[cluster]: which cluster this node belongs to and how it finds it."""

    name: str = _setting(doc="Human name of the cluster, shown on the dashboard and in logs",
                         check=_is_name, example="vstore")
    id: str = _setting(doc="Cluster UUID from vstore mkfs; a node refuses peers of another cluster",
                       check=_is_uuid, example="00000000-0000-0000-0000-000000000000")
    mds: tuple[Address, ...] = _setting(doc="MDS addresses to contact first; any one reachable MDS is enough",
                                        example=("127.0.0.1:9400",))
    secret_file: str = _setting(doc="File with the cluster secret that authenticates every connection (mode 0600)",
                                check=_is_abs_path, example="/etc/vstore/cluster.secret")

    def _cross_check(self) -> Iterator[tuple[str, str]]:
        if not self.mds:
            yield "mds", "must list at least one MDS address"


@dataclass(frozen=True, slots=True, kw_only=True)
class NetSection:
    """[net]: limits and deadlines of every TCP connection (vstore.net)."""

    frame_auth: FrameAuthName = _setting(
        "hmac", doc="hmac tags every frame so it cannot be injected or replayed; none only on trusted networks or TLS")
    max_connections: int = _setting(4096, unit="connections", apply="reload", min=1, max=1_000_000,
                                    doc="Connections accepted at once; more are refused so memory stays bounded")
    max_connections_per_ip: int = _setting(
        256, unit="connections", apply="reload", min=1, max=1_000_000,
        doc="Connections from one peer IP; stops one misbehaving client from taking them all")
    handshake_timeout_ms: int = _setting(5000, unit="ms", min=1, max=600_000,
                                         doc="A peer that has not authenticated by then is dropped (slowloris)")
    frame_read_timeout_ms: int = _setting(30_000, unit="ms", min=1, max=3_600_000,
                                          doc="A frame that started arriving must finish within this (slowloris)")
    idle_timeout_s: int = _setting(900, unit="s", min=1, max=86_400,
                                   doc="Connections with no traffic for this long are closed to free their slot")
    request_timeout_ms: int = _setting(30_000, unit="ms", min=1, max=3_600_000,
                                       doc="Deadline of one remote call before it fails with DeadlineExceeded")

    def _cross_check(self) -> Iterator[tuple[str, str]]:
        if self.max_connections_per_ip > self.max_connections:
            yield "max_connections_per_ip", f"must be ≤ max_connections (= {self.max_connections})"


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSection:
    """[tls]: optional mutual TLS (vstore.net.tls); the cluster-secret handshake still runs inside it."""

    enabled: bool = _setting(False, doc="Wrap every connection in TLS 1.3; for networks you do not trust")
    cert_file: str = _setting("", check=_is_abs_path_or_empty,
                              doc="PEM certificate of this node, signed by ca_file; required when enabled")
    key_file: str = _setting("", check=_is_abs_path_or_empty,
                             doc="PEM private key of cert_file; required when enabled")
    ca_file: str = _setting("", check=_is_abs_path_or_empty,
                            doc="PEM CA that signed every node's certificate; required when enabled")

    def _cross_check(self) -> Iterator[tuple[str, str]]:
        if self.enabled:
            for name in ("cert_file", "key_file", "ca_file"):
                if not getattr(self, name):
                    yield name, "must be an absolute path when enabled = true"


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSection:
    """[log]: where log records go and how much of them (vstore.logs)."""

    level: LogLevel = _setting("info", apply="reload", doc="Least severe level written; debug is chatty")
    format: LogFormat = _setting("text", doc="text for people, json (one object per line) for log shippers")
    file: str = _setting("", apply="reload", check=_is_abs_path_or_empty,
                         doc="Log file, reopened on reload so logrotate works; empty = stderr")


@dataclass(frozen=True, slots=True, kw_only=True)
class MdsSection:
    """[mds]: metadata server settings (role "mds" only)."""

    admin_listen: Address = _setting(Address("127.0.0.1", 9480),
                                     doc="Dashboard and /api/v1 address; loopback unless you mean to expose it")
    admin_enabled: bool = _setting(True, doc="Serve the dashboard, /api/v1 and /metrics at admin_listen")
    metrics_listen: str = _setting("", check=_is_address_or_empty,
                                   doc="Also serve /metrics, without a token, on this HOST:PORT; empty = not")
    metrics_token_file: str = _setting("", check=_is_abs_path_or_empty,
                                       doc="File holding the bearer token /metrics on admin_listen asks for; "
                                           "empty = /metrics there needs a dashboard login")
    election_timeout_ms: int = _setting(
        1000, unit="ms", min=1, max=60_000,
        doc="A follower that hears no leader for this long starts an election; > 3 × heartbeat_interval_ms")
    heartbeat_interval_ms: int = _setting(100, unit="ms", min=1, max=20_000,
                                          doc="How often the leader tells followers it is alive")
    cs_offline_after_s: int = _setting(5, unit="s", apply="reload", min=1, max=3600,
                                       doc="A CS silent this long gets no new chunks (still counted as a replica)")
    cs_failed_after_s: int = _setting(
        60, unit="s", apply="reload", min=1, max=30 * 86_400,
        doc="A CS silent this long is failed and its replicas are rebuilt elsewhere; > cs_offline_after_s")
    safe_mode_timeout_s: int = _setting(
        60, unit="s", apply="reload", min=0, max=86_400,
        doc="After a start, no rebuild or deletion until the chunkservers have reported, or this long")
    write_lease_s: int = _setting(
        60, unit="s", apply="reload", min=1, max=3600,
        doc="Lifetime of a write capability; a chunk being written is not copied until it has run out")
    capability_skew_s: int = _setting(
        30, unit="s", min=0, max=3600,
        doc="Clock difference between nodes that capabilities tolerate; keep clocks in sync (NTP) well within it")
    session_expire_s: int = _setting(
        30, unit="s", apply="reload", min=2, max=86_400,
        doc="A client silent this long is gone: its open files are released and another host may take its files")
    raft_log_map_bytes: int = _setting(8 * GiB, unit="bytes", min=16 * MiB, max=16 * 1024 * GiB,
                                       doc="Largest size of the Raft log's LMDB (compacted as entries apply)")
    lmdb_map_bytes: int = _setting(8 * GiB, unit="bytes", min=16 * MiB, max=16 * 1024 * GiB,
                                   doc="Largest size of the metadata LMDB; a full map stops all writes")

    def _cross_check(self) -> Iterator[tuple[str, str]]:
        # Raft needs several heartbeats per election timeout, or a single lost heartbeat
        # starts an election and the cluster flaps between leaders (Raft paper §5.6).
        if self.election_timeout_ms <= 3 * self.heartbeat_interval_ms:
            yield ("election_timeout_ms",
                   f"must be > 3 × heartbeat_interval_ms (= {self.heartbeat_interval_ms})")
        # Offline first (stop placing), failed later (start rebuilding): the reverse order would
        # rebuild every replica of a CS that only missed a few heartbeats.
        if self.cs_failed_after_s <= self.cs_offline_after_s:
            yield "cs_failed_after_s", f"must be > cs_offline_after_s (= {self.cs_offline_after_s})"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkserverSection:
    """[chunkserver]: chunk server settings (role "cs" only)."""

    heartbeat_interval_ms: int = _setting(
        1000, unit="ms", min=1, max=60_000,
        doc="How often this CS reports to the MDS; keep well below the MDS cs_offline_after_s")
    reserve_bytes: int = _setting(268_435_456, unit="bytes", apply="reload", min=0, max=2**50,
                                  doc="Free space kept on the disk so the file system itself never fills")
    scrub_rate_bytes_per_s: int = _setting(
        16 * MiB, unit="bytes/s", apply="reload", min=0, max=2**40,
        doc="Read rate for checking stored chunks against their checksums; 0 turns scrubbing off")
    max_open_chunks: int = _setting(1024, unit="chunks", min=1, max=1_000_000,
                                    doc="Chunk files kept open at once; bounds file descriptors")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSection:
    """[client]: a mount's data path and caches (vstore.client, vstore.fuse); client configs only."""

    id: str = _setting("", check=lambda v: None if v == "" else _is_name(v),
                       doc="Name of this client in the MDS's session list and logs; empty = client-<host>-<pid>")
    host: str = _setting("", check=_is_label,
                         doc="Failure-domain label of this machine (as a CS's [node] host): its replicas are read first")
    deadline_s: int = _setting(60, unit="s", min=1, max=86_400,
                               doc="An operation retried through failures this long, then EIO to the application")
    io_bytes: int = _setting(MiB, unit="bytes", min=4096, max=16 * MiB,
                             doc="The largest single write down a chunk's chain")
    writeback_bytes: int = _setting(16 * MiB, unit="bytes", min=0, max=2**34,
                                    doc="Dirty bytes buffered per open file before they are written out")
    writeback_age_ms: int = _setting(5000, unit="ms", min=10, max=600_000,
                                     doc="Buffered data older than this is written out in the background")
    readahead_bytes: int = _setting(4 * MiB, unit="bytes", min=0, max=256 * MiB,
                                    doc="The largest read-ahead window of a sequential reader")
    attr_timeout_ms: int = _setting(1000, unit="ms", min=0, max=3_600_000,
                                    doc="How long the kernel trusts directory attributes (files: revalidated by us)")
    entry_timeout_ms: int = _setting(1000, unit="ms", min=0, max=3_600_000,
                                     doc="How long the kernel trusts a name lookup; other hosts' renames show after it")
    allow_other: bool = _setting(False, doc="Let users other than the mounting one use the mount (containers)")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """A mount's configuration: [cluster] and optionally [client], [net], [tls], [log]."""

    cluster: ClusterSection
    net: NetSection
    tls: TlsSection
    log: LogSection
    client: ClientSection


def _section(cls: type, *, doc: str, role: str | None = None, required: bool = False) -> Any:
    default: Any = dataclasses.MISSING if required else (None if role else dataclasses.MISSING)
    factory: Any = dataclasses.MISSING if required or role else cls
    return field(default=default, default_factory=factory,
                 metadata={"section": cls, "doc": doc, "role": role})


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """One node's whole configuration. ``mds`` is None unless role is "mds", ``chunkserver``
    is None unless role is "cs"."""

    node: NodeSection = _section(NodeSection, required=True, doc="who this node is")
    cluster: ClusterSection = _section(ClusterSection, required=True,
                                       doc="the cluster this node belongs to")
    net: NetSection = _section(NetSection, doc="limits and deadlines of every TCP connection")
    tls: TlsSection = _section(TlsSection, doc="optional TLS around the cluster-secret handshake")
    log: LogSection = _section(LogSection, doc="where log records go")
    mds: MdsSection | None = _section(MdsSection, role="mds", doc="metadata server settings (role mds only)")
    chunkserver: ChunkserverSection | None = _section(ChunkserverSection, role="cs",
                                                      doc="chunk server settings (role cs only)")


# ---- schema (built once at import from the dataclasses above) --------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    kind: Any          # the resolved annotation
    default: Any       # dataclasses.MISSING when required
    meta: typing.Mapping[str, Any]

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


@dataclass(frozen=True, slots=True)
class _Section:
    name: str
    cls: type
    role: str | None
    doc: str
    keys: tuple[_Key, ...]


def _supported(kind: Any) -> bool:
    if kind in (str, int, bool, Address) or kind == tuple[Address, ...]:
        return True
    return typing.get_origin(kind) is Literal and all(isinstance(a, str) for a in typing.get_args(kind))


def _build_schema() -> tuple[_Section, ...]:
    sections = []
    for top in dataclasses.fields(NodeConfig):
        cls = top.metadata["section"]
        hints = typing.get_type_hints(cls)
        keys = []
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            # These are our own bugs, caught at import by every test run, not operator input.
            assert _supported(kind), f"{cls.__name__}.{f.name}: loader cannot read {kind}"
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name}: needs doc="
            assert f.metadata["apply"] in ("restart", "reload"), f"{cls.__name__}.{f.name}: bad apply="
            assert kind is not int or f.metadata["min"] is not None, f"{cls.__name__}.{f.name}: an int needs min="
            assert f.default is not dataclasses.MISSING or f.metadata["example"] is not _NO_EXAMPLE, \
                f"{cls.__name__}.{f.name}: a required key needs example="
            keys.append(_Key(f.name, kind, f.default, f.metadata))
        sections.append(_Section(top.name, cls, top.metadata["role"], top.metadata["doc"], tuple(keys)))
    assert sections[0].name == "node", "[node] is loaded first: the role decides which sections apply"
    return tuple(sections)


_SCHEMA = _build_schema()


def _client_schema() -> tuple[_Section, ...]:
    by_name = {sec.name: sec for sec in _SCHEMA}
    hints = typing.get_type_hints(ClientSection)
    keys = tuple(_Key(f.name, hints[f.name], f.default, f.metadata) for f in dataclasses.fields(ClientSection))
    for key in keys:
        assert key.meta.get("doc") and (key.kind is not int or key.meta["min"] is not None), key.name
    client = _Section("client", ClientSection, None, "a mount's data path and caches", keys)
    return (by_name["cluster"], by_name["net"], by_name["tls"], by_name["log"], client)


_CLIENT_SCHEMA = _client_schema()
_ROLES: tuple[str, ...] = typing.get_args(NodeRole)

# ---- loading -------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate the config file at ``path``.

    Returns a fully validated NodeConfig. Raises ConfigError (one line, naming ``path`` as
    given) when the file cannot be read, is not UTF-8, is larger than 1 MiB, is not valid
    TOML, or breaks any rule. Deterministic: the same bytes give the same result.
    """
    file = os.fspath(path)
    return parse_config(_read_text(file), file)


def _read_text(file: str) -> str:
    """A config file's text: ConfigError when it cannot be read, is over 1 MiB or is not UTF-8."""
    try:
        with open(file, "rb") as fp:
            data = fp.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read config file: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigError(file, "", f"larger than {_MAX_FILE_BYTES} bytes; is this really a config file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", f"not UTF-8 text (byte {exc.start}); TOML files are UTF-8") from None
    return text


def load_client_config(path: str | os.PathLike[str]) -> ClientConfig:
    """A mount's config at ``path``: a client config ([cluster], optional [client], [net],
    [tls], [log]) or any node's config (its [cluster], [net], [tls] and [log] are used, with
    [client] defaults). Raises ConfigError like ``load_config``."""
    file = os.fspath(path)
    return parse_client_config(_read_text(file), file)


def parse_client_config(text: str, file: str = "<string>") -> ClientConfig:
    doc = _toml(text, file)
    if "node" in doc:
        node = _build(doc, file)
        return ClientConfig(cluster=node.cluster, net=node.net, tls=node.tls, log=node.log, client=ClientSection())
    by_name = {s.name: s for s in _CLIENT_SCHEMA}
    for name, value in doc.items():
        if name not in by_name:
            if isinstance(value, dict):
                raise ConfigError(file, f"[{name}]", "unknown section in a client config"
                                  + _suggest(name, [f"[{s}]" for s in by_name], as_section=True))
            raise ConfigError(file, name, "key outside any section")
        if not isinstance(value, dict):
            raise ConfigError(file, f"[{name}]", f"expected a section ([{name}] table), got {_describe(value)}")
    if "cluster" not in doc:
        raise ConfigError(file, "[cluster]", "required section missing: which cluster to mount "
                                             "(name, id, mds, secret_file)")
    values = {sec.name: _load_section(sec, doc.get(sec.name) or {}, file) for sec in _CLIENT_SCHEMA}
    return ClientConfig(**values)


def parse_config(text: str, file: str = "<string>") -> NodeConfig:
    """Validate TOML ``text`` as a node config; ``file`` is only used in error messages.

    Returns a NodeConfig or raises ConfigError for the first problem found: unknown
    sections first, then [node] (so the role is known), then the other sections in the
    order of NodeConfig's fields. Deterministic.
    """
    doc = _toml(text, file)
    return _build(doc, file)


def _toml(text: str, file: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"TOML syntax error: {_one_line(str(exc))}") from None


def _build(doc: dict[str, Any], file: str) -> NodeConfig:
    by_name = {s.name: s for s in _SCHEMA}
    for name, value in doc.items():
        if name not in by_name:
            if isinstance(value, dict):
                raise ConfigError(file, f"[{name}]", "unknown section" + _suggest(name, [f"[{s}]" for s in by_name],
                                                                                  as_section=True))
            homes = [s.name for s in _SCHEMA if any(k.name == name for k in s.keys)]
            hint = f" (did you mean [{homes[0]}] {name}?)" if homes else ""
            raise ConfigError(file, name, f"key outside any section{hint}")
        if not isinstance(value, dict):
            raise ConfigError(file, f"[{name}]", f"expected a section ([{name}] table), got {_describe(value)}")

    node = _load_section(by_name["node"], doc.get("node", {}), file)
    assert isinstance(node, NodeSection)
    values: dict[str, Any] = {"node": node}
    for section in _SCHEMA[1:]:
        table = doc.get(section.name)
        if section.role is not None and section.role != node.role:
            if table is not None:
                raise ConfigError(file, f"[{section.name}]",
                                  f'section only valid for role "{section.role}" (this node has role = "{node.role}")')
            values[section.name] = None
            continue
        values[section.name] = _load_section(section, table or {}, file)
    return NodeConfig(**values)


def _load_section(section: _Section, table: dict[str, Any], file: str) -> Any:
    known = [k.name for k in section.keys]
    for name in table:
        if name not in known:
            raise ConfigError(file, f"[{section.name}] {name}", "unknown key" + _suggest_key(section, name))
    values: dict[str, Any] = {}
    for key in section.keys:
        path = f"[{section.name}] {key.name}"
        if key.name not in table:
            if key.required:
                example = _toml_value(_example(key, None))
                raise ConfigError(file, path, f"required key missing: {key.meta['doc']} "
                                              f"(e.g. {key.name} = {example})")
            continue
        raw = table[key.name]
        value = _convert(key.kind, raw, file, path)
        problem = _check_value(key, value)
        if problem:
            raise _rule_error(file, path, raw, problem)
        values[key.name] = value
    instance = section.cls(**values)
    cross = getattr(instance, "_cross_check", None)
    for name, problem in (cross() if cross else ()):
        raw = table.get(name, _ABSENT)
        shown = getattr(instance, name) if raw is _ABSENT else raw
        raise _rule_error(file, f"[{section.name}] {name}", shown, problem, defaulted=raw is _ABSENT)
    return instance


def _convert(kind: Any, raw: Any, file: str, path: str) -> Any:
    """Check ``raw`` (as tomllib produced it) against the annotation and build the value."""
    if kind is bool:
        if not isinstance(raw, bool):
            raise _type_error(file, path, "a boolean (true or false)", raw)
        return raw
    if kind is int:
        # bool is a subclass of int in Python; in a config file `true` is never a number.
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _type_error(file, path, "an integer", raw)
        return raw
    if kind is str:
        if not isinstance(raw, str):
            raise _type_error(file, path, "a string", raw)
        return raw
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if not isinstance(raw, str):
            raise _type_error(file, path, "a string, one of " + _choices(choices), raw)
        if raw not in choices:
            raise _rule_error(file, path, raw, "must be one of " + _choices(choices))
        return raw
    if kind is Address:
        if not isinstance(raw, str):
            raise _type_error(file, path, 'a string "HOST:PORT"', raw)
        try:
            return Address.parse(raw)
        except ValueError as exc:
            raise _rule_error(file, path, raw, f"is not a valid HOST:PORT address: it {exc}") from None
    if kind == tuple[Address, ...]:
        if not isinstance(raw, list):
            raise _type_error(file, path, 'an array of "HOST:PORT" strings', raw)
        seen: dict[Address, int] = {}
        for i, item in enumerate(raw):
            address = _convert(Address, item, file, f"{path}[{i}]")
            if address in seen:
                raise _rule_error(file, f"{path}[{i}]", item, f"duplicates {path.split()[-1]}[{seen[address]}]")
            seen[address] = i
        return tuple(seen)
    raise AssertionError(f"{path}: unsupported annotation {kind}")  # _build_schema rules this out


def _check_value(key: _Key, value: Any) -> str | None:
    lo, hi = key.meta["min"], key.meta["max"]
    if isinstance(value, int) and not isinstance(value, bool):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                return f"must be ≥ {_bound(key, lo)}"
            return f"must be between {_bound(key, lo)} and {_bound(key, hi)}"
    check = key.meta["check"]
    return check(value) if check else None


def _bound(key: _Key, n: int) -> str:
    if key.meta["unit"].startswith("bytes") and n >= KiB:
        return f"{_toml_value(n)} ({_human_bytes(n)})"
    return _toml_value(n)


# ---- error text --------------------------------------------------------------------------------


def _rule_error(file: str, path: str, value: Any, rule: str, *, defaulted: bool = False) -> ConfigError:
    """``FILE: [section] key = VALUE rule``, the STYLE.md §5 form for a value that breaks a rule."""
    shown = _show(value) + (" (default)" if defaulted else "")
    # ConfigError always writes "FILE: KEY: problem"; the rule form has no colon after the key,
    # so build the text without a key and record the key afterwards for programs that read it.
    exc = ConfigError(file, "", f"{path} = {shown} {rule}")
    exc.key = path
    exc.details["key"] = path
    return exc


def _type_error(file: str, path: str, expected: str, raw: Any) -> ConfigError:
    hint = ""
    if isinstance(raw, str) and expected.startswith(("an integer", "a boolean")):
        hint = " (write it without quotes)"
    return ConfigError(file, path, f"expected {expected}, got {_describe(raw)}{hint}")


def _describe(raw: Any) -> str:
    if isinstance(raw, bool):
        kind = "boolean"
    elif isinstance(raw, int):
        kind = "integer"
    elif isinstance(raw, float):
        kind = "float"
    elif isinstance(raw, str):
        kind = "string"
    elif isinstance(raw, list):
        kind = "array"
    elif isinstance(raw, dict):
        return "a table"
    else:
        kind = "date/time"
    return f"{kind} {_show(raw)}"


def _show(value: Any) -> str:
    """The value as TOML would spell it, on one line and cut to a readable length."""
    text = _toml_value(value) if isinstance(value, (bool, int, str, list, tuple, Address)) else str(value)
    text = _one_line(text)
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split("\n"))


def _choices(choices: tuple[str, ...]) -> str:
    return ", ".join(f'"{c}"' for c in choices)


def _suggest(name: str, candidates: list[str], *, as_section: bool = False) -> str:
    target = f"[{name}]" if as_section else name
    close = difflib.get_close_matches(target, candidates, n=1)
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (expected one of {', '.join(candidates)})"


def _suggest_key(section: _Section, name: str) -> str:
    close = difflib.get_close_matches(name, [k.name for k in section.keys], n=1)
    if close:
        return f" (did you mean {close[0]}?)"
    # The key is right but the section is wrong, e.g. heartbeat_interval_ms under [node].
    for other in _SCHEMA:
        if other is not section and any(k.name == name for k in other.keys):
            return f" (did you mean [{other.name}] {name}?)"
    return f" (keys in [{section.name}]: {', '.join(k.name for k in section.keys)})"


# ---- template ------------------------------------------------------------------------------


def render_template(role: str) -> str:
    """A commented TOML config for ``role`` ("mds" or "cs") that parses as it is.

    Every key appears with its one-line "why", its unit, its default and whether a change
    needs a restart or a reload. Required keys carry an example value and say so. Raises
    UsageError for any other role. Deterministic.
    """
    if role not in _ROLES:
        raise UsageError(f"unknown role {role!r}: expected one of {', '.join(_ROLES)}")
    out = [f"# vstore {role} node configuration, generated by `vstore config template --role {role}`.",
           "# Every key is shown with its default; required keys show an example value to replace.",
           "# (restart): read once at start-up.  (reload): re-read on SIGHUP without a restart.",
           "# Sizes are in bytes and durations carry their unit in the name (_ms, _s).", ""]
    for section in _SCHEMA:
        if section.role is not None and section.role != role:
            continue
        out.append(f"# {section.doc}")
        out.append(f"[{section.name}]")
        for key in section.keys:
            value = _example(key, role) if key.required else key.default
            unit = key.meta["unit"]
            if key.required:
                facts = "required (the value below is an example)"
            else:
                facts = f"default {_toml_value(key.default)}"
                if unit == "bytes" or unit == "bytes/s":
                    facts += f" ({_human_bytes(key.default)}{'/s' if unit == 'bytes/s' else ''})"
            if unit:
                facts += f", unit {unit}"
            out.append(f"# {key.meta['doc']}")
            out.append(f"# {facts} ({key.meta['apply']})")
            out.append(f"{key.name} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)


def _example(key: _Key, role: str | None) -> Any:
    example = key.meta["example"]
    if isinstance(example, dict):
        example = example[role or _ROLES[0]]
    return example


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 100_000 else str(value)
    if isinstance(value, Address):
        value = str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise AssertionError(f"no TOML spelling for {value!r}")


def _human_bytes(n: int) -> str:
    for unit, size in (("PiB", 1024**5), ("TiB", 1024**4), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


# ---- reload support ----------------------------------------------------------------------------


def changed_keys(old: NodeConfig, new: NodeConfig) -> list[tuple[str, str]]:
    """The keys whose values differ between two configs, as ``("[section] key", apply)``.

    For a reload (SIGHUP): apply the "reload" keys, and refuse or warn about the "restart"
    ones. A section present in one config and absent in the other (a role change) is
    reported as ``("[section]", "restart")``. Pure and deterministic, in schema order.
    """
    changes: list[tuple[str, str]] = []
    for section in _SCHEMA:
        a, b = getattr(old, section.name), getattr(new, section.name)
        if (a is None) != (b is None):
            changes.append((f"[{section.name}]", "restart"))
            continue
        if a is None:
            continue
        for key in section.keys:
            if getattr(a, key.name) != getattr(b, key.name):
                changes.append((f"[{section.name}] {key.name}", key.meta["apply"]))
    return changes
