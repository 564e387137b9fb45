"""Hostile values for ``fuzz --replay`` and ``soak --ram-mib``: one clear line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from vbsim.cli.main import main

from .conftest import one_line


@pytest.mark.parametrize(
    ("replay", "fragment"),
    [
        ("/dev/zero", "not a regular file"),  # an endless read (MemoryError before issue 12)
        ("/nonexistent/input", "no such file"),
        ("/", "not a regular file"),
    ],
)
def test_fuzz_replay_of_a_hostile_path(
    replay: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fuzz", "image", "--replay", replay]) == 2
    one_line(capsys, fragment)


def test_fuzz_replay_over_the_target_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big[red].bin"
    big.write_bytes(bytes(64 * 1024 + 1))
    assert main(["fuzz", "image", "--replay", str(big)]) == 2
    one_line(capsys, "big[red].bin", "65536-byte input limit")


def test_fuzz_replay_of_a_saved_input_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "input"
    saved.write_bytes(b"MZ" + bytes(62))
    assert main(["fuzz", "image", "--replay", str(saved)]) == 0
    assert "64-byte input ran without a finding" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("0", "out of range"),
        ("-5", "negative"),
        ("99999999999", "out of range"),
        ("abc", "not a whole number"),
        ("1e3", "not a whole number"),
    ],
)
def test_soak_ram_mib_hostile(
    value: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["soak", "--programs", "1", "--ram-mib", value]) == 2
    one_line(capsys, fragment)


def _booted_or_refused(code: int, capsys: pytest.CaptureFixture[str], fragment: str) -> None:
    """64 GiB is in the policy's range: the machine boots, or the host (mmap) or the model
    (today: NT's frames, OutOfFrames) refuses it on one line; never a traceback."""
    if code == 2:
        one_line(capsys, fragment)
    else:
        out, err = capsys.readouterr()
        assert code in (0, 1) and "Traceback" not in out + err, (code, err)


def test_soak_with_the_largest_ram(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["soak", "--programs", "1", "--ram-mib", "65536", "--json"])
    _booted_or_refused(code, capsys, "--ram-mib 65536: the machine does not boot")


def test_boot_with_the_largest_ram(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "big.toml"
    policy.write_text("ram_mib = 65536\n")
    code = main(["boot", "--policy", str(policy)])
    _booted_or_refused(code, capsys, "cannot boot with ram_mib = 65536")


# -- a sweep of hostile inputs: each one clear line, exit 2 --------------------------------------
HOSTILE = [
    (["boot", "--preset", "[red]x"], "unknown preset '[red]x'"),
    (["boot", "--policy", "/dev/zero"], "not a regular file"),
    (["boot", "--policy", "/nonexistent.toml"], "No such file"),
    (["boot", "--policy", "."], "directory"),
    (["machine", "--ram", "-1M"], "negative"),
    (["machine", "--ram", "ünï"], "not a number"),
    (["machine", "--vps", "999"], "--vps"),
    (["attack", "[bold]x"], "unknown scenario '[bold]x'"),
    (["attack", "A1", "--preset", "ö"], "unknown preset 'ö'"),
    (["attacks", "--only", "ZZZ"], "ZZZ"),
    (["matrix", "--preset", ""], "unknown preset ''"),
    (["trustlet", "run", "x[/]y.exe"], "x[/]y.exe"),
    (["trustlet", "run", "LsaIso.exe", "--id", "99999999999999999999999"], "ULONGLONG"),
    (["trustlet", "export", "[red]", "-o", "x.exe"], "[red]"),
    (["image", "inspect", "/dev/zero"], "not a regular file"),
    (["report", "-p", "zz"], "zz"),
    (["soak", "--programs", "-1"], "--programs"),
    (["soak", "--capability", "ZZ"], "ZZ"),
    (["fuzz", "nope"], "unknown target 'nope'"),
    (["fuzz", "image", "--seconds", "-1"], "--seconds"),
    (["conformance", "--profile", "x"], "unknown profile 'x'"),
    (["campaign", "show", "/nonexistent"], "holds no campaign"),
    (["bench", "--only", "nope"], "unknown metric"),
]


@pytest.mark.parametrize(("argv", "fragment"), HOSTILE, ids=lambda a: " ".join(a)[:40])
def test_hostile_input_isone_line(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    one_line(capsys, fragment)


def test_a_dangling_symlink_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "p[red].toml"
    link.symlink_to(tmp_path / "missing.toml")
    assert main(["boot", "--policy", str(link)]) == 2
    one_line(capsys, "p[red].toml")


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_narrow_output_encoding_never_ends_a_command(encoding: str) -> None:
    """'§', '→' and box drawing print as '?' with PYTHONIOENCODING=ascii (issue 12)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": encoding, "COLUMNS": "100"}
    for argv in (["boot"], ["attack", "A1", "--trace"], ["trustlet", "list"]):
        done = subprocess.run(
            [sys.executable, "-m", "vbsim", *argv], capture_output=True, env=env, check=False
        )
        assert done.returncode == 0, (argv, done.stderr[-400:])
        assert b"Traceback" not in done.stderr and b"UnicodeEncodeError" not in done.stderr
