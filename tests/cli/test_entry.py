"""The ``vbsim`` entry: usage errors are one line (exit 2), JSON with ``--json``; no traceback."""

from __future__ import annotations

import json

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
