"""``vbsim report``: the command as ``vbsim`` mounts it (``app.command("report")(report)``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vbsim.cli.report_cmd import report


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True, add_completion=False)

    @app.callback()
    def main() -> None:
        """vbsim (test mount)."""

    app.command("report")(report)
    return app


def invoke(app: typer.Typer, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["report", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def one_line_error(code: int, stderr: str, *fragments: str) -> None:
    assert code == 2, (code, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_writes_the_page(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    code, stdout, stderr = invoke(app, "--preset", "vbs", "-o", str(out))
    assert code == 0, stderr
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>") and 'data-preset="vbs"' in html
    assert 'data-preset="hardened"' not in html
    assert f"wrote {out}" in stdout and "1 preset(s)" in stdout
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left behind


def test_unknown_preset(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    code, _, stderr = invoke(app, "-p", "vbs", "-p", "nope", "-o", str(out))
    one_line_error(code, stderr, "unknown preset", "nope", "vbs-hvci")
    assert not out.exists()


def test_output_problems(app: typer.Typer, tmp_path: Path) -> None:
    code, _, stderr = invoke(app, "-p", "vbs", "-o", str(tmp_path))
    one_line_error(code, stderr, "is a directory")
    code, _, stderr = invoke(app, "-p", "vbs", "-o", str(tmp_path / "missing" / "r.html"))
    one_line_error(code, stderr, "does not exist")


def test_a_special_file_is_refused_not_replaced(app: typer.Typer, tmp_path: Path) -> None:
    """Issue 12: ``-o /dev/full`` replaced the device node with an HTML file."""
    fifo = tmp_path / "pipe.html"
    import os

    os.mkfifo(fifo)
    code, _, stderr = invoke(app, "--preset", "vbs", "-o", str(fifo))
    one_line_error(code, stderr, "not a regular file")
    assert fifo.is_fifo()


def test_a_symlink_is_written_through_and_json_says_where(app: typer.Typer, tmp_path: Path) -> None:
    import json

    target = tmp_path / "real.html"
    link = tmp_path / "link.html"
    link.symlink_to(target.name)
    code, stdout, _ = invoke(app, "--preset", "vbs", "-o", str(link), "--json")
    assert code == 0
    assert link.is_symlink() and target.read_text().lower().startswith("<!doctype html>")
    summary = json.loads(stdout)
    assert summary["output"] == str(target.resolve()) and summary["presets"] == ["vbs"]
