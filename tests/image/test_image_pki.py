"""The model PKI: location, caching, profiles and EKUs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from vbsim.image import EKU_CODE_SIGNING, EKU_IUM, EKU_WINDOWS_SYSTEM_COMPONENT, data_dir
from vbsim.image.chain import certificate_ekus
from vbsim.image.pki import PkiError
from vbsim.signing import Pki, load_pki, model_pki, other_pki


def test_data_dir_respects_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VBSIM_DATA_DIR", str(tmp_path / "explicit"))
    assert data_dir() == tmp_path / "explicit"
    monkeypatch.delenv("VBSIM_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "vbsim"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".local" / "share" / "vbsim"


def test_model_pki_is_stored_and_cached(pki: Pki, pki_base: Path) -> None:
    assert pki.directory.is_relative_to(pki_base)
    for name in ("root.pem", "root.key", "intermediate.pem", "leaf.key", "chain-ium.pem"):
        assert pki.path(name).is_file()
    assert pki.path("root.key").stat().st_mode & 0o077 == 0
    assert model_pki(pki_base) is pki


def test_env_var_selects_the_directory(
    monkeypatch: pytest.MonkeyPatch, pki_base: Path, pki: Pki
) -> None:
    monkeypatch.setenv("VBSIM_DATA_DIR", str(pki_base))
    assert model_pki() is pki


def test_reloaded_from_disk_is_identical(pki: Pki) -> None:
    from vbsim.signing.pki import _load

    again = _load(pki.name, pki.directory)
    assert again.root == pki.root and again.profiles == pki.profiles


def test_root_and_chain(pki: Pki) -> None:
    root = pki.root
    assert root.subject == root.issuer
    assert root.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == (
        "vbsim model root"
    )
    assert isinstance(pki.root_key, rsa.RSAPrivateKey) and pki.root_key.key_size == 2048
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    pki.intermediate.verify_directly_issued_by(root)
    for cert in pki.profiles.values():
        cert.verify_directly_issued_by(pki.intermediate)
    assert pki.signer().chain_pem().count(b"BEGIN CERTIFICATE") == 2


def test_profile_ekus(pki: Pki) -> None:
    assert certificate_ekus(pki.profiles["ium"]) == (
        EKU_CODE_SIGNING,
        EKU_WINDOWS_SYSTEM_COMPONENT,
        EKU_IUM,
    )
    assert certificate_ekus(pki.profiles["windows"]) == (
        EKU_CODE_SIGNING,
        EKU_WINDOWS_SYSTEM_COMPONENT,
    )
    assert certificate_ekus(pki.profiles["codesign"]) == (EKU_CODE_SIGNING,)


def test_make_leaf(pki: Pki) -> None:
    leaf = pki.make_leaf(["1.2.3.4", EKU_IUM])
    assert set(certificate_ekus(leaf.certificate) or ()) == {"1.2.3.4", EKU_IUM}
    assert pki.make_leaf([EKU_IUM, "1.2.3.4"]) is leaf
    assert certificate_ekus(pki.make_leaf([]).certificate) is None


def test_other_root_is_separate(pki: Pki, other: Pki, pki_base: Path) -> None:
    assert other.root != pki.root
    assert other.directory != pki.directory
    assert "vbsim other root" in other.root.subject.rfc4514_string()
    assert other_pki(pki_base) is other


def test_corrupt_store_is_reported(tmp_path: Path) -> None:
    pki = load_pki("vbsim broken root", tmp_path)
    pki.path("root.pem").write_bytes(b"garbage")
    from vbsim.signing.pki import _cache

    del _cache[(tmp_path.resolve(), "vbsim broken root")]
    with pytest.raises(PkiError, match="delete it"):
        load_pki("vbsim broken root", tmp_path)
