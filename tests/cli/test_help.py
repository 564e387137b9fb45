"""Every command's ``--help``: flags take no value, options show a plain metavar, nothing cut."""

from __future__ import annotations

import re

import pytest
import typer
from typer.main import get_command

from vbsim.cli.main import app, main


def _paths() -> list[list[str]]:
    paths: list[list[str]] = []

    def walk(command: typer.core.TyperGroup | object, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(get_command(app), [])
    return paths


PATHS = _paths()
#: Typer's own type labels, which read as if a flag took a value (issue 12).
TYPE_LABEL = re.compile(r"<(bool|int|float|str|path|list|int range|float range)[^>]*>")


def test_every_command_is_walked() -> None:
    names = {" ".join(p) for p in PATHS}
    assert {"", "demo", "boot", "bench", "soak", "trustlet run", "image verify"} <= names


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "vbsim")
def test_help_fits_and_shows_no_type_labels(
    path: list[str], width: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    assert main([*path, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"Usage: vbsim {' '.join(path)}".rstrip())
    assert not TYPE_LABEL.search(text), TYPE_LABEL.search(text)
    assert "…" not in text and "{" not in text  # nothing cut; no Typer-style {ARG}
    assert all(len(line) <= width for line in text.splitlines())
    assert "BOOLEAN" not in text  # a flag is named alone


def test_options_show_their_metavar(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    main(["bench", "--help"])
    text = capsys.readouterr().out
    assert re.search(
        r"--repeat\s+INTEGER\s+Repetitions per metric\.\s+\[default: 7; 1 to 100\]", text
    )
    assert re.search(r"--only\s+METRIC\s", text)
    assert re.search(r"--json\s+Print results as JSON\.", text)
    main(["soak", "--help"])
    text = capsys.readouterr().out
    assert re.search(r"--ram-mib\s+MIB\s", text) and "--no-include-known-bugs" not in text
    main(["attack", "--help"])
    text = capsys.readouterr().out
    assert "Usage: vbsim attack [OPTIONS] SCENARIO_ID" in text
    assert re.search(r"--preset\s+NAME\s", text)
