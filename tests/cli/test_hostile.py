"""Hostile values for ``fuzz --replay`` and ``soak --ram-mib``: one clear line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from vbsim.cli.main import main


def _one_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


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
    _one_line(capsys, fragment)


def test_fuzz_replay_over_the_target_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big[red].bin"
    big.write_bytes(bytes(64 * 1024 + 1))
    assert main(["fuzz", "image", "--replay", str(big)]) == 2
    _one_line(capsys, "big[red].bin", "65536-byte input limit")


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
        ("-5", "out of range"),
        ("99999999999", "out of range"),
        ("abc", "valid integer"),
        ("1e3", "valid integer"),
    ],
)
def test_soak_ram_mib_hostile(
    value: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["soak", "--programs", "1", "--ram-mib", value]) == 2
    _one_line(capsys, fragment)


def _booted_or_refused(code: int, capsys: pytest.CaptureFixture[str], fragment: str) -> None:
    """64 GiB is in the policy's range: the machine boots, or the host (mmap) or the model
    (today: NT's frames, OutOfFrames) refuses it on one line; never a traceback."""
    if code == 2:
        _one_line(capsys, fragment)
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
