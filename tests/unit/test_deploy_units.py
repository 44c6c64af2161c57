"""The systemd units in deploy/systemd: every command they run is one ``vstore`` accepts.

A unit file is checked the way systemd would read it: ``%i`` replaced by an instance name,
``${VAR}`` by one word and ``$VAR`` by its value split at whitespace (systemd.service(5),
"Command lines"), the ``-``/``@``/``+``/``!`` prefixes dropped. The argv then goes through
``vstore``'s real parser, so a renamed flag or subcommand breaks this test, not a host at
boot. ``systemd-analyze verify`` checks the rest of the syntax where it is installed.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vstore.cli.main import build_parser

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
VSTORE = "/usr/local/bin/vstore"
INSTANCE = "node1"
MOUNT_ENV = {"MOUNTPOINT": "/mnt/vstore", "MOUNT_OPTS": ""}
# Options that give a service a mount namespace of its own (systemd.exec(5), "Sandboxing"):
# a FUSE mount made inside one would be invisible to the rest of the host.
MOUNT_NAMESPACE_OPTIONS = {
    "PrivateTmp", "PrivateDevices", "PrivateMounts", "ProtectSystem", "ProtectHome", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "ProcSubset",
    "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths", "TemporaryFileSystem",
    "BindPaths", "BindReadOnlyPaths", "RootDirectory", "RootImage", "MountAPIVFS", "PrivateNetwork",
}


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as ordered (key, value) lists: keys such as ExecStartPre may
    repeat, which configparser cannot represent."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}:{number}: no line continuations, please"
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}:{number}: bad section header {line!r}"
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None and "=" in line, f"{path.name}:{number}: {line!r} outside a section or no '='"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}: expected exactly one, found {found}"
    return found[0]


def command_argv(line: str, env: dict[str, str]) -> list[str]:
    """An Exec line as systemd runs it for instance INSTANCE with environment ``env``."""
    line = line.lstrip("-@:+!")
    line = line.replace("%i", INSTANCE).replace("%I", INSTANCE)
    assert "%" not in line, f"unhandled specifier in {line!r}"
    line = re.sub(r"\$\{(\w+)\}", lambda m: shlex.quote(env[m.group(1)]), line)  # one word
    line = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], line)                   # split at whitespace
    return shlex.split(line)


def vstore_args(argv: list[str]):  # type: ignore[no-untyped-def]
    """argv of a vstore command through vstore's own parser (UsageError if it refuses)."""
    assert argv[0] == VSTORE, f"{argv[0]}: the units run {VSTORE} (README: symlink it to the venv's vstore)"
    return build_parser().parse_args(argv[1:])


@pytest.mark.parametrize("name", ["vstore-mds@.service", "vstore-cs@.service"])
def test_the_node_units_serve_the_instance_config(name: str) -> None:
    unit = parse_unit(UNITS / name)
    args = vstore_args(command_argv(one(unit, "Service", "ExecStart"), {}))
    assert (args.command, args.config) == ("serve", f"/etc/vstore/{INSTANCE}.toml")
    assert one(unit, "Service", "Type") == "exec"
    assert not values(unit, "Service", "ExecStop"), "serve stops on SIGTERM; nothing else is needed"
    # a chunkserver host often runs no MDS: no dependency on one
    assert not any("vstore-mds" in v for _, v in unit["Unit"])


def test_the_mount_unit_mounts_the_instance_config_in_the_foreground_on_the_env_mountpoint() -> None:
    unit = parse_unit(UNITS / "vstore-mount@.service")
    assert one(unit, "Service", "EnvironmentFile") == "/etc/vstore/%i.env"
    assert one(unit, "Service", "Type") == "simple"
    for opts, allow_other in (("", False), ("--allow-other", True)):
        env = {**MOUNT_ENV, "MOUNT_OPTS": opts}
        args = vstore_args(command_argv(one(unit, "Service", "ExecStart"), env))
        assert (args.command, args.config, args.mountpoint) == ("mount", f"/etc/vstore/{INSTANCE}.toml",
                                                                 "/mnt/vstore")
        assert args.foreground, "systemd must own the mount process: --foreground"
        assert args.allow_other is allow_other
    # a mountpoint with a space stays one argument
    args = vstore_args(command_argv(one(unit, "Service", "ExecStart"), {**MOUNT_ENV, "MOUNTPOINT": "/mnt/a b"}))
    assert args.mountpoint == "/mnt/a b"
    for key in ("ExecStartPre", "ExecStop", "ExecStopPost"):
        for line in values(unit, "Service", key):
            argv = command_argv(line, MOUNT_ENV)
            if argv[0].endswith("/vstore"):
                vstore_args(argv)
            else:
                assert argv[-1] == "/mnt/vstore", f"{key}={line}: acts on the mountpoint"
    sandboxed = MOUNT_NAMESPACE_OPTIONS & {k for k, _ in unit["Service"]}
    assert not sandboxed, f"{sorted(sandboxed)} would hide the FUSE mount in a private mount namespace"


@pytest.mark.parametrize("name", ["vstore-mds@.service", "vstore-cs@.service", "vstore-mount@.service"])
def test_every_unit_restarts_on_failure_stops_with_sigterm_and_waits_for_the_network(name: str) -> None:
    unit = parse_unit(UNITS / name)
    assert set(unit) == {"Unit", "Service", "Install"}
    assert "network-online.target" in one(unit, "Unit", "After").split()
    assert "network-online.target" in one(unit, "Unit", "Wants").split()
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "RestartSec")
    # exit 2 is vstore's "bad config, secret or data dir": a restart cannot fix it
    assert one(unit, "Service", "RestartPreventExitStatus") == "2"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert one(unit, "Service", "TimeoutStopSec")
    assert int(one(unit, "Service", "LimitNOFILE")) >= 65536
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (package systemd): the units' syntax is not verified")
    # verify needs an instance name and checks that each command exists: ours runs the
    # venv's vstore instead of /usr/local/bin/vstore
    vstore = Path(sys.executable).with_name("vstore")
    assert vstore.exists(), f"{vstore}: the venv has no vstore entry point"
    paths = []
    for template in sorted(UNITS.glob("*@.service")):
        path = tmp_path / template.name.replace("@.", f"@{INSTANCE}.")
        path.write_text(template.read_text().replace(VSTORE, str(vstore)))
        paths.append(str(path))
    assert len(paths) == 3
    result = subprocess.run([tool, "verify", *paths], capture_output=True, text=True, timeout=60)
    ours = [line for line in result.stderr.splitlines() if "vstore-" in line]
    assert result.returncode == 0 and not ours, result.stderr
