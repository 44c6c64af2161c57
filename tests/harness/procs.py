"""Real processes for tests: started, owned and always reaped by PID (STYLE.md §7).

``ProcessGroup`` starts children with their output in per-process log files, kills them
with SIGTERM then SIGKILL at teardown even when the test failed, and can dump every log
for the failure report.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vstore(*args: str, timeout: float = 90, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``vstore`` command as an operator would (a child process; output captured).
    ``env``: variables set for it on top of this process's environment."""
    return subprocess.run([sys.executable, "-m", "vstore.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **env} if env else None)


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    history: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class ProcessGroup:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, Proc] = {}

    def start(self, name: str, argv: list[str], *, env: Mapping[str, str] | None = None) -> Proc:
        """Start (or restart) ``name``. ``env``: variables for this start only, on top of
        this process's environment (a restart without it runs without them)."""
        proc = self.procs.get(name) or Proc(name, argv, self.log_dir / f"{name}.log")
        proc.argv = argv
        log = open(proc.log_path, "ab")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env,
                                      start_new_session=True)
        log.close()
        extra = " ".join(f"{k}={v}" for k, v in (env or {}).items())
        proc.history.append(f"start pid {proc.popen.pid}" + (f" with {extra}" if extra else ""))
        self.procs[name] = proc
        return proc

    def python(self, name: str, module: str, *args: str, env: Mapping[str, str] | None = None) -> Proc:
        return self.start(name, [sys.executable, "-m", module, *args], env=env)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.running and proc.popen is not None:
            os.kill(proc.popen.pid, sig)
            proc.history.append(f"signal {signal.Signals(sig).name}")
            if sig in (signal.SIGKILL, signal.SIGTERM):
                proc.popen.wait(30)

    def stop_all(self, grace_s: float = 5.0) -> None:
        for proc in self.procs.values():
            if proc.running and proc.popen is not None:
                try:
                    os.kill(proc.popen.pid, signal.SIGCONT)
                    os.kill(proc.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(10)

    def dump_logs(self, tail_lines: int = 60) -> str:
        out = []
        for proc in self.procs.values():
            text = proc.log_path.read_text(errors="replace").splitlines() if proc.log_path.exists() else []
            out.append(f"===== {proc.name} ({'; '.join(proc.history)}) =====")
            out.extend(text[-tail_lines:])
        return "\n".join(out)
