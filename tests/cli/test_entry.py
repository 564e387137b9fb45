"""The ``vbsim`` entry: usage errors are one line (exit 2), JSON with ``--json``; no traceback."""

from __future__ import annotations

import importlib.abc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vbsim.cli.main import main


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["machine", "--ram", "4K"], "minimum of 1M"),
        (["attack", "A99"], "unknown scenario 'A99'"),
        (["boot", "--preset", ""], "unknown preset ''"),
        (["boot", "--preset", "nope"], "unknown preset 'nope'"),
        (["bogus"], "No such command"),
        (["demo", "--bogus"], "No such option"),
    ],
)
def test_a_usage_error_is_one_line_with_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0] and "Traceback" not in err


def test_with_json_the_refusal_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attack", "A99", "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert "A99" in data["error"] and data["exit_code"] == 2


def test_a_repeated_preset_is_one_column(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attacks", "--only", "A1", "--preset", "vbs", "--preset", "vbs", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["preset"] for r in results] == ["vbs"]


def _json_error(capsys: pytest.CaptureFixture[str], code: int = 2) -> dict[str, object]:
    """The one JSON error object on stdout, and the same message as one line on stderr."""
    out, err = capsys.readouterr()
    data: dict[str, object] = json.loads(out)
    assert data == {"ok": False, "error": data["error"], "exit_code": code}, data
    assert err.strip() == f"error: {data['error']}", err
    return data


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "-p", "nope"],
        ["report", "-o", "/tmp"],
        ["report", "-p", "vbs", "-o", "/dev/full"],
        ["report", "-o", ""],
        ["campaign", "show", "/nonexistent/campaign"],
        ["campaign", "show", "/etc/hostname"],
        ["conformance", "NOPE"],
        ["conformance", "--profile", "nope"],
        ["fuzz", "nope"],
        ["fuzz", "policy", "--engine", "nope"],
        ["fuzz", "image", "--replay", "/nonexistent/input"],
        ["soak", "-p", "nope"],
        ["soak", "-c", "NOPE"],
        ["soak", "--engine", "nope"],
        ["soak", "--generator", "nope"],
        ["soak", "--ram-mib", "15"],
        ["soak", "--resume", "/tmp"],
        ["attack", "A99"],
        ["image", "inspect", "/nonexistent/image.exe"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_every_refusal_with_json_is_the_json_error_object(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--json"]) == 2
    _json_error(capsys)


@pytest.mark.parametrize(
    "argv", [["matrix", "--json"], ["boot", "--preset", "nope", "--json"], ["demo"]]
)
def test_stdout_that_cannot_be_written_is_one_line(argv: list[str]) -> None:
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "vbsim", *argv],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.decode().splitlines() == [
        "error: stdout cannot be written (No space left on device)"
    ]


def test_a_closed_pipe_ends_quietly() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "vbsim", "attack", "NOPE", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # `| true`: the reader is gone before vbsim writes
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141
    assert stderr == b""


def test_ctrl_c_during_the_start_up_imports_is_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands are imported inside main(), under its handler (an interrupt there was a
    KeyboardInterrupt traceback)."""

    class Interrupt(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, *args: object) -> None:
            if name == "vbsim.cli.commands":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "vbsim.cli.commands", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupt(), *sys.meta_path])
    assert main(["demo"]) == 130
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err


def test_ctrl_c_while_lief_initialises_waits_for_it() -> None:
    """A KeyboardInterrupt raised inside LIEF's C++ module initialisation aborted the process
    (nanobind: 'terminate called', exit -6); the import holds Ctrl-C back until it is done."""
    import os
    import signal

    from vbsim.cli.main import _interrupts_deferred

    with pytest.raises(KeyboardInterrupt), _interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        reached = True  # not interrupted inside the block
    assert reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_halted_boot_has_its_own_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "tampered.toml"
    policy.write_text('secure_boot = true\n[components."ntoskrnl.exe"]\ntampered = true\n')
    assert main(["boot", "--policy", str(policy), "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["halted"]


def test_help_lists_commands_in_help_order(capsys: pytest.CaptureFixture[str]) -> None:
    from vbsim.cli.main import HELP_ORDER

    main(["--help"])
    out = capsys.readouterr().out
    listed = [
        line.split()[1]
        for line in out.splitlines()
        if line.startswith("│ ") and len(line.split()) > 1 and line.split()[1] in HELP_ORDER
    ]
    assert listed == list(HELP_ORDER)


def test_help_names_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit codes:" in text and "3 the machine refused to boot" in text


@pytest.mark.parametrize(
    "argv",
    [
        ["trustlet", "run", "LsaIso.exe", "--preset", "vbs-off"],
        ["image", "verify", "/etc/hostname"],
    ],
    ids=["admission refused", "not signed"],
)
def test_ok_matches_the_outcome(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
