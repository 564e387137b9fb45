"""Interoperability with osslsigncode, in both directions."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from vbsim.image import requirement_for, verify_image
from vbsim.signing import Pki, sign_image

OSSLSIGNCODE = shutil.which("osslsigncode")
pytestmark = pytest.mark.skipif(OSSLSIGNCODE is None, reason="osslsigncode is not installed")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    assert OSSLSIGNCODE is not None
    return subprocess.run(
        [OSSLSIGNCODE, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_osslsigncode_verifies_a_vbsim_signature(
    pki: Pki, signed_trustlet: bytes, tmp_path: Path
) -> None:
    signed = tmp_path / "signed.exe"
    signed.write_bytes(signed_trustlet)
    done = _run("verify", "-CAfile", str(pki.path("root.pem")), "-in", str(signed))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Signature verification: ok" in output
    assert "Succeeded" in output
    calculated = next(line for line in output.splitlines() if "Calculated message digest" in line)
    current = next(line for line in output.splitlines() if "Current message digest" in line)
    assert calculated.split(":")[1].strip() == current.split(":")[1].strip()


def test_osslsigncode_rejects_a_vbsim_signature_from_another_root(
    other: Pki, pki: Pki, unsigned_trustlet: bytes, tmp_path: Path
) -> None:
    signed = tmp_path / "other.exe"
    signed.write_bytes(sign_image(unsigned_trustlet, other.signer()))
    done = _run("verify", "-CAfile", str(pki.path("root.pem")), "-in", str(signed))
    assert done.returncode != 0


def test_vbsim_verifies_an_osslsigncode_signature(
    pki: Pki, unsigned_trustlet: bytes, tmp_path: Path
) -> None:
    unsigned, signed = tmp_path / "unsigned.exe", tmp_path / "signed.exe"
    unsigned.write_bytes(unsigned_trustlet)
    done = _run(
        "sign",
        "-certs",
        str(pki.path("chain-ium.pem")),
        "-key",
        str(pki.path("leaf.key")),
        "-n",
        "LsaIso",
        "-in",
        str(unsigned),
        "-out",
        str(signed),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = verify_image(
        signed.read_bytes(), pki.trust_store(), requirement=requirement_for("trustlet")
    )
    assert result.ok, result.detail
    assert result.program_name == "LsaIso"
    assert len(result.chain) == 3


def test_osslsigncode_verifies_vbsim_signed_real_binary(pki: Pki, tmp_path: Path) -> None:
    spec = importlib.util.find_spec("pip")
    launcher = (
        None
        if spec is None or spec.origin is None
        else (Path(spec.origin).parent / "_vendor" / "distlib" / "t64.exe")
    )
    if launcher is None or not launcher.is_file():
        pytest.skip("no real Windows binary (pip's distlib launcher) available")
    signed = tmp_path / "t64.exe"
    signed.write_bytes(sign_image(launcher.read_bytes(), pki.signer("codesign")))
    done = _run("verify", "-CAfile", str(pki.path("root.pem")), "-in", str(signed))
    assert done.returncode == 0, done.stdout + done.stderr
    assert verify_image(signed.read_bytes(), pki.trust_store()).ok
