"""The ``vstore`` command frame: every subcommand is listed, usage errors are one line with
exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vstore.cli.main import EXIT_OK, EXIT_USAGE, run
from vstore.config import load_config

COMMANDS = ["mkfs", "add-node", "rm-node", "serve", "mount", "umount", "status", "top", "get-attr", "set-attr",
            "scrub", "demo", "config"]


def test_help_lists_every_command_and_the_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        run(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f"\n    {command} " in out
    assert "exit codes:" in out and "2  usage or configuration error" in out


@pytest.mark.parametrize("problem", ["missing config", "missing mountpoint", "not a directory", "no secret"])
def test_mount_refuses_bad_input_in_one_line_with_exit_2(problem: str, tmp_path, capsys) -> None:
    config = tmp_path / "client.toml"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    config.write_text(f"""
[cluster]
name = "c"
id = "00000000-0000-0000-0000-000000000000"
mds = ["127.0.0.1:9"]
secret_file = "{tmp_path / 'absent.secret'}"
""")
    argv = {"missing config": ["mount", "-c", str(tmp_path / "absent.toml"), str(mnt)],
            "missing mountpoint": ["mount", "-c", str(config), str(tmp_path / "nope")],
            "not a directory": ["mount", "-c", str(config), str(config)],
            "no secret": ["mount", "-c", str(config), str(mnt), "--foreground"]}[problem]
    assert run(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vstore: ") and "Traceback" not in err
    assert {"missing config": "absent.toml", "missing mountpoint": "does not exist",
            "not a directory": "not a directory", "no secret": "absent.secret"}[problem] in err


def test_umount_of_a_directory_that_is_not_mounted_says_so(tmp_path, capsys) -> None:
    assert run(["umount", str(tmp_path)]) == EXIT_USAGE
    assert "is not mounted" in capsys.readouterr().err


def test_serve_with_a_missing_config_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    assert run(["serve", "-c", str(tmp_path / "absent.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "absent.toml" in err


@pytest.mark.parametrize("argv,fragment", [
    (["bogus"], "invalid choice: 'bogus'"),
    (["mkfs"], "the following arguments are required: --cluster, --data, --listen"),
    (["add-node", "--role", "web"], "argument --role: invalid choice: 'web'"),
    (["config", "template"], "the following arguments are required: --role"),
    ([], "the following arguments are required: COMMAND"),
])
def test_usage_errors_are_one_line_and_exit_2(argv: list[str], fragment: str, capsys) -> None:
    assert run(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and err.startswith("vstore: ")
    assert "Traceback" not in err


@pytest.mark.parametrize("role", ["mds", "cs"])
def test_config_template_prints_a_file_that_config_check_accepts(role: str, tmp_path: Path, capsys) -> None:
    assert run(["config", "template", "--role", role]) == EXIT_OK
    path = tmp_path / f"{role}.toml"
    path.write_text(capsys.readouterr().out)
    assert load_config(path).node.role == role
    assert run(["config", "check", str(path)]) == EXIT_OK
    assert f"{path}: ok ({role} node" in capsys.readouterr().out


def test_config_check_reports_a_bad_file_in_one_line_with_exit_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "cs.toml"
    run(["config", "template", "--role", "cs"])
    path.write_text(capsys.readouterr().out.replace("reserve_bytes", "reserve_bytez"))
    assert run(["config", "check", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reserve_bytez: unknown key" in err and str(path) in err
    assert run(["config", "check", str(tmp_path / "missing.toml")]) == EXIT_USAGE


def test_the_installed_console_script_runs_without_a_traceback(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("vstore")
    assert script.exists(), "the package's console script is not installed in this environment"
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    proc = subprocess.run([str(script), "mkfs"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == EXIT_USAGE and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    proc = subprocess.run([str(script), "top", "-c", str(tmp_path / "none.toml")], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == EXIT_USAGE and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("vstore ")
