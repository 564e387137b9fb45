"""The ``vbsim image`` and ``vbsim trustlet`` sub-apps, mounted as ``vbsim`` mounts them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from vbsim.cli.image_cmd import image_app
from vbsim.cli.trustlet_cmd import trustlet_app


def make_app() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True, add_completion=False)
    app.add_typer(image_app, name="image")
    app.add_typer(trustlet_app, name="trustlet")
    return app


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def assert_one_line_error(self, *fragments: str) -> None:
        """Exit status 2, one line on stderr naming the problem, no traceback."""
        assert self.exit_code == 2, (self.exit_code, self.stdout, self.stderr)
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("error: ")
        assert "Traceback" not in self.stdout + self.stderr
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])


Run = Callable[..., Outcome]


@pytest.fixture(autouse=True)
def _in_an_empty_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commands run in a directory of their own: names such as ``LsaIso.exe`` resolve to a file
    in the working directory first, and a user who followed the README (``vbsim trustlet export
    LsaIso.exe -o LsaIso.exe`` in the clone, signed by their own model PKI) made the tests find
    that file instead of the installed trustlet."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def cli() -> Run:
    app = make_app()
    runner = CliRunner()

    def run(*args: str) -> Outcome:
        result = runner.invoke(app, [str(a) for a in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a traceback would have reached the user
        return Outcome(result.exit_code, result.stdout, result.stderr)

    return run


def one_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    """The refusal was one ``error:`` line on stderr naming each fragment, with no traceback;
    returns what went to stdout."""
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return out
