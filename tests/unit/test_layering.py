"""The module map of STYLE.md §1 and docs/architecture.md, enforced on the source.

Walks every module's imports with ``ast`` (as s3ql's check_imports.py does) and checks:
imports go downward only; metadata, chunkserver and client never import each other; only
the CLI imports fuse and nothing imports the CLI; pure modules do no I/O. Then imports
every module alone in a fresh interpreter, which finds circular imports (aiohttp's
test_circular_imports.py).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "vstore"

#: Which vstore packages each package may import (besides itself). Checked by prefix.
ALLOWED: dict[str, set[str]] = {
    "vstore.wire": set(),
    "vstore.errors": {"vstore.wire"},
    "vstore.config": {"vstore.errors", "vstore.wire"},
    "vstore.logs": set(),
    "vstore.metrics": set(),
    "vstore.failpoints": {"vstore.errors"},
    "vstore.net": {"vstore.wire", "vstore.errors", "vstore.logs", "vstore.metrics"},
    "vstore.metadata": {"vstore.wire", "vstore.errors", "vstore.config", "vstore.logs", "vstore.metrics",
                        "vstore.net", "vstore.failpoints"},
    # the dashboard is a client of the cluster's admin RPCs (so a follower shows the leader's
    # data by the same path), never of an MDS's internals
    "vstore.admin": {"vstore.wire", "vstore.net", "vstore.client", "vstore.errors", "vstore.logs", "vstore.metrics",
                     "vstore.config"},
    "vstore.chunkserver": {"vstore.wire", "vstore.net", "vstore.errors", "vstore.config", "vstore.logs",
                           "vstore.metrics", "vstore.failpoints"},
    "vstore.client": {"vstore.wire", "vstore.net", "vstore.errors", "vstore.logs", "vstore.metrics"},
    # the mount reads its config; ops speak in the wire's data types (Attr, ErrorCode), never to the network
    "vstore.fuse": {"vstore.client", "vstore.errors", "vstore.logs", "vstore.metrics", "vstore.config", "vstore.wire"},
    "vstore.cli": {"vstore"},  # the top: anything
    "vstore": set(),           # vstore/__init__.py
}

#: Pure modules: no I/O, no clock, no global randomness (STYLE.md §1, §2).
PURE = ["vstore.wire", "vstore.metadata.raft.core", "vstore.metadata.raft.quorum", "vstore.metadata.raft.progress",
        "vstore.metadata.raft.types", "vstore.metadata.raft.log", "vstore.metadata.raft.codec",
        "vstore.metadata.placement", "vstore.metadata.repair", "vstore.chunkserver.chunkfile",
        "vstore.metadata.liveness", "vstore.admin.model"]
FORBIDDEN_IN_PURE = {"asyncio", "socket", "lmdb", "os", "time", "random", "secrets", "threading", "subprocess",
                     "select", "selectors", "signal", "shutil", "pathlib", "io", "tempfile", "aiohttp",
                     "asyncio_dgram", "pyfuse3", "trio", "datetime", "uuid", "ssl", "vstore.net"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names imported from it, line), relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def _owner(name: str) -> str:
    """The ALLOWED key a module belongs to (longest prefix)."""
    best = ""
    for key in ALLOWED:
        if (name == key or name.startswith(key + ".")) and len(key) > len(best):
            best = key
    assert best, f"{name} is not in the module map: add it to ALLOWED and docs/architecture.md"
    return best


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_every_module_is_in_the_module_map() -> None:
    for name in MODULES:
        _owner(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_downward_only(name: str) -> None:
    owner = _owner(name)
    allowed = ALLOWED[owner]
    for module, _, line in _imports(name, MODULES[name]):
        if not _within(module, "vstore") or _within(module, owner) or owner == "vstore.cli":
            continue
        assert any(_within(module, a) for a in allowed), \
            f"{MODULES[name].relative_to(ROOT)}:{line}: {owner} may not import {module} (allowed: {sorted(allowed)})"


@pytest.mark.parametrize("name", [n for n in sorted(MODULES) if any(_within(n, p) for p in PURE)])
def test_pure_modules_import_no_io_clock_or_global_randomness(name: str) -> None:
    for module, names, line in _imports(name, MODULES[name]):
        root = module.split(".")[0]
        if module == "random" and names and set(names) <= {"Random"}:
            continue  # the type, for annotations; instances are injected
        bad = root if root in FORBIDDEN_IN_PURE else module if module in FORBIDDEN_IN_PURE else None
        if bad is None and names:
            bad = next((f"{module}.{n}" for n in names if f"{module}.{n}" in FORBIDDEN_IN_PURE), None)
        assert bad is None, f"{MODULES[name].relative_to(ROOT)}:{line}: pure module imports {bad}"


def test_nothing_imports_the_cli_and_only_the_cli_imports_fuse() -> None:
    for name, path in MODULES.items():
        for module, _, line in _imports(name, path):
            if _within(module, "vstore.cli"):
                assert _within(name, "vstore.cli"), f"{path}:{line}: nothing may import the CLI"
            if _within(module, "vstore.fuse") and not _within(name, "vstore.fuse"):
                assert _within(name, "vstore.cli"), f"{path}:{line}: only the CLI imports fuse"


def test_the_checker_itself_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom vstore.net import rpc\nfrom . import sibling\n")
    found = [m for m, _, _ in _imports("vstore.wire.bad", bad)]
    assert found == ["os", "vstore.net", "vstore.wire"]


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    def run(name: str) -> tuple[str, int, str]:
        proc = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", f"import {name}"],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        return name, proc.returncode, proc.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [r for r in pool.map(run, sorted(MODULES)) if r[1] != 0]
    assert not failures, "\n".join(f"{n}: {err}" for n, _, err in failures)
