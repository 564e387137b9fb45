"""Text from a user or a file reaches the terminal as itself: markup escaped, control
characters visible (``\\x1b``), never a MarkupError or a raw ESC (hostile-input audit)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vbsim.boot.trustlets import installed
from vbsim.ium.images import LSAISO
from vbsim.policy import Component
from vbsim.signing import Signer, sign_image

from .conftest import Run

ESC = "\x1b"


def self_signed(common_name: str) -> Signer:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1234)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return Signer(key=key, certificate=certificate)


def flat(text: str) -> str:
    return "".join(text.split())


def assert_shown_as_itself(text: str, *fragments: str) -> None:
    assert ESC not in text, text
    for fragment in fragments:
        assert flat(fragment) in flat(text), (fragment, text)


@pytest.mark.parametrize(
    "common_name",
    ["[red]EVIL[/] [/] \x1b[31mESC", "[red]EVIL \x1b[31mESC"],
    ids=["closing-tags", "open-tag"],
)
def test_trustlet_run_shows_a_hostile_signer_name(
    cli: Run, tmp_path: Path, common_name: str
) -> None:
    signed = sign_image(installed(LSAISO, Component()), self_signed(common_name))
    path = tmp_path / "evil.exe"
    path.write_bytes(signed)
    outcome = cli("trustlet", "run", str(path))
    assert outcome.exit_code == 1, outcome.stdout + outcome.stderr
    assert_shown_as_itself(outcome.stdout, common_name.replace(ESC, "\\x1b"))


def test_trustlet_run_shows_a_hostile_file_name(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "[red]x[" / "]\x1b[31m.exe"  # '[red]x[/]...': the slash is a directory
    path.parent.mkdir()
    path.write_bytes(installed(LSAISO, Component()))
    outcome = cli("trustlet", "run", str(path))
    assert outcome.exit_code == 0, outcome.stdout + outcome.stderr
    assert_shown_as_itself(outcome.stdout, "[red]x[/]\\x1b[31m.exe")


def test_trustlet_export_shows_a_hostile_output_name(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "e\x1b[31mxp has space.exe"
    outcome = cli("trustlet", "export", LSAISO, "-o", str(path))
    assert outcome.exit_code == 0, outcome.stderr
    assert_shown_as_itself(outcome.stdout, "wrote", "e\\x1b[31mxp")
    # the command to copy quotes the name (a space would split it)
    assert f"vbsim image verify '{tmp_path}/e\\x1b[31mxp has space.exe'" in outcome.stdout


def test_image_verify_shows_a_hostile_timestamp_authority() -> None:
    from io import StringIO

    from rich.console import Console

    from vbsim.cli.image_cmd import _print_one

    stamp = {"kind": "rfc3161", "time": "2024", "authority": "[red]TSA\x1b[31m", "verified": False}
    sig = {
        "valid": True,
        "weak": False,
        "label": "1",
        "image_digest": None,
        "program_name": None,
        "timestamps": [stamp | {"detail": "bad \x1b[2J"}],
        "validity_time": None,
        "skipped_certificates": [],
        "certificate_notes": [],
        "chain": [],
        "chain_trusted": True,
        "chain_source": "",
    }
    buffer = StringIO()
    _print_one(Console(file=buffer, width=100), sig, "model")
    assert_shown_as_itself(buffer.getvalue(), "[red]TSA\\x1b[31m", "bad \\x1b[2J")


def _main_output(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from vbsim.cli.main import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["soak", "fuzz", "show"])
def test_a_hostile_results_directory_is_shown_visibly(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "s\x1b[31mk[red]"
    soak = ["soak", "-n", "1", "--workers", "1", "--batch", "1", "--max-actions", "2"]
    if command == "fuzz":
        argv = ["fuzz", "policy", "--workers", "2", "-s", "0.5", "--interval", "0.5"]
    else:
        argv = soak
    code, out, err = _main_output([*argv, "--out", str(directory)], capsys)
    assert code == 0, err
    if command == "show":
        code, out, err = _main_output(["campaign", "show", str(directory)], capsys)
        assert code == 0, err
    assert_shown_as_itself(out, "s\\x1b[31mk[red]")


def test_report_wrote_line_is_visible(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main_output(
        ["report", "-p", "vbs-off", "-o", str(tmp_path / "r\x1b[31mep.html")], capsys
    )
    assert code == 0, err
    assert_shown_as_itself(out, "wrote", "r\\x1b[31mep.html")


@pytest.mark.parametrize(
    "argv",
    [
        ["attacks", "--only", "\x1b[31mX"],
        ["attacks", "--preset", "\x1b[31mX"],
        ["bench", "--only", "\x1b[31mX"],
        ["report", "-p", "\x1b[31mX"],
        ["conformance", "\x1b[31mX"],
        ["attack", "\x1b[31mX"],
    ],
    ids=lambda argv: argv[0] + " " + argv[1],
)
def test_error_messages_show_control_characters(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = _main_output(argv, capsys)
    assert code == 2
    assert_shown_as_itself(err, "\\x1b[31mX")


@pytest.mark.parametrize(
    ("content", "why"), [(b"vbs = \n", "not valid TOML"), (b"\xff\xfe", "not UTF-8")]
)
def test_a_hostile_policy_file_name_in_an_error(
    content: bytes, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p\x1b[31m.toml"
    policy.write_bytes(content)
    code, _out, err = _main_output(["boot", "--policy", str(policy)], capsys)
    assert code == 2
    assert_shown_as_itself(err, "p\\x1b[31m.toml", why)


@pytest.mark.parametrize("names", [["--only", ""], ["--preset", ""]])
def test_an_empty_name_is_shown_quoted(
    names: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = _main_output(["attacks", *names], capsys)
    assert code == 2 and "(s) ''" in err, err


def test_report_empty_preset_is_shown_quoted(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = _main_output(["report", "-p", ""], capsys)
    assert code == 2 and "preset(s) ''" in err, err


def test_an_attack_runs_detail_and_mechanism_reach_the_terminal_verbatim() -> None:
    """``attack`` prints a run's detail and deciding check, which carry what guest code and
    files wrote (a driver's name, a trace value): markup in them is text, not a tag."""
    from dataclasses import replace

    from rich.console import Console

    from vbsim.attacks.catalogue import a01_a04_vtl1_boundary as boundary
    from vbsim.attacks.report import print_run
    from vbsim.attacks.runner import run

    result, _ = run(boundary.A10, "vbs")
    hostile = replace(result, detail="closing [/] tag [bold]x", mechanism="slat[/]")
    out = Console(record=True, width=100, color_system=None)
    print_run(hostile, [], out, show_trace=False)
    text = out.export_text()
    assert "detail: closing [/] tag [bold]x" in text and "deciding check: slat[/]" in text
