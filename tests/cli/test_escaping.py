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
