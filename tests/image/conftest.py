"""Fixtures for vbsim.image: the PKIs live in a session temporary directory, never in ~."""

from __future__ import annotations

from pathlib import Path

import image_testkit as kit
import pytest

from vbsim.image import TrustStore
from vbsim.signing import Pki, model_pki, other_pki, sign_image


@pytest.fixture(scope="session")
def pki_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vbsim-data")


@pytest.fixture(scope="session")
def pki(pki_base: Path) -> Pki:
    return model_pki(pki_base)


@pytest.fixture(scope="session")
def other(pki_base: Path) -> Pki:
    return other_pki(pki_base)


@pytest.fixture(scope="session")
def trust(pki: Pki) -> TrustStore:
    return pki.trust_store()


@pytest.fixture(scope="session")
def unsigned_trustlet() -> bytes:
    return kit.trustlet()


@pytest.fixture(scope="session")
def signed_trustlet(pki: Pki, unsigned_trustlet: bytes) -> bytes:
    return sign_image(unsigned_trustlet, pki.signer("ium"), program_name="LsaIso")


@pytest.fixture(scope="session")
def small_signed(pki: Pki) -> bytes:
    """A small (unpadded) signed trustlet, for exhaustive mutation."""
    return sign_image(kit.trustlet(size=None), pki.signer("ium"))
