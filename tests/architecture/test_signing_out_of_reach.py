"""The model root's private keys are out of guest code's reach.

Keys and every signing function live host side in ``vbsim.signing`` (the model's stand-in for
Microsoft's signing service); ``vbsim.image``, which kernels and attack steps may import, holds
verification and public certificates only.  An audit found a K0 step that ran
``sign_image(rootkit, model_pki().signer("codesign"))`` and loaded the result under HVCI; these
tests keep that from coming back: at run time (nothing importable by guest code yields a key)
and statically (the one-rule checker must flag a step that imports the signing package).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import vbsim.image
from architecture import checker

ROOT = Path(__file__).resolve().parents[2] / "src"
CATALOGUE_A1 = ROOT / "vbsim/attacks/catalogue/a01_a04_vtl1_boundary.py"
A1 = "vbsim.attacks.catalogue.a01_a04_vtl1_boundary"
#: The signing service's package: in checker.FORBIDDEN_MODULES for guest code and steps.
SIGNING = "vbsim.signing"
#: Guest-package modules that still import the signing package (none: the trustlet image
#: builder, a host-side tool, moved from ``vbsim.ium.images`` to ``vbsim.boot.trustlets``).
KNOWN_IMPORTERS: set[str] = set()


def _planted(source: str, function: str, line: str) -> str:
    """``source`` with ``line`` as the first statement of ``function``'s body."""
    lines = source.splitlines()
    start = next(i for i, text in enumerate(lines) if text.startswith(f"def {function}("))
    body = next(i for i in range(start, len(lines)) if lines[i].rstrip().endswith(":")) + 1
    return "\n".join([*lines[:body], f"    {line}", *lines[body:]])


# -- run time: nothing guest code may import holds a key ---------------------------------------
def test_the_audit_step_no_longer_finds_a_signer() -> None:
    """The audit's K0 step: ``sign_image`` and a key-holding ``model_pki`` from vbsim.image."""
    with pytest.raises(ImportError):
        exec("from vbsim.image import sign_image", {})
    with pytest.raises(ImportError):
        exec("from vbsim.image import Signer", {})
    with pytest.raises(ImportError):
        exec("from vbsim.image.pkcs7 import build_signed_data", {})
    public = vbsim.image.model_pki()
    assert not hasattr(public, "signer") and not hasattr(public, "make_leaf")


def _private_keys(value: object, depth: int = 0) -> list[str]:
    if isinstance(value, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return [type(value).__name__]
    if depth > 2:
        return []
    found: list[str] = []
    for name in getattr(type(value), "__dataclass_fields__", {}):
        found += [f"{name}.{k}" for k in _private_keys(getattr(value, name), depth + 1)]
    return found


def test_the_public_pki_holds_no_private_key() -> None:
    assert _private_keys(vbsim.image.model_pki()) == []


def _module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_verification_module_imports_the_signing_package_at_load() -> None:
    """vbsim.image may be imported by guest code: none of its modules binds anything of
    vbsim.signing (``image.pki`` reaches it only inside a function, to *generate* a missing
    PKI on disk; it hands back certificates)."""
    offenders = {
        path.name
        for path in (ROOT / "vbsim/image").glob("*.py")
        if any(checker._within(m, SIGNING) for m in _module_level_imports(path))
    }
    assert offenders == set()


def test_only_known_tools_in_guest_packages_import_the_signing_package() -> None:
    """Whole-module guest code (nt, sk, ium).  Mixed modules (the catalogue) may import it for
    host-side code (a scenario builds the attacker's own image); their steps may not, which is
    the checker's to see once the ban is in."""
    importers = set()
    for path in checker.guest_files():
        name = checker.module_name(path)
        if not any(checker._within(name, package) for package in checker.GUEST_PACKAGES):
            continue
        if any(
            checker._within(origin, SIGNING)
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import | ast.ImportFrom)
            for _, origin, _ in checker._imports(node, checker.module_name(path), False)
        ):
            importers.add(checker.module_name(path))
    assert importers <= KNOWN_IMPORTERS, importers - KNOWN_IMPORTERS


def test_every_signing_module_is_under_the_signing_package() -> None:
    """What holds a key or signs is all under ``vbsim.signing``: one prefix to ban."""
    package = importlib.import_module(SIGNING)
    modules = {info.name for info in pkgutil.iter_modules(package.__path__, f"{SIGNING}.")}
    assert {f"{SIGNING}.pki", f"{SIGNING}.authenticode", f"{SIGNING}.signer"} <= modules


# -- statically: the checker flags a guest import of the signing package -----------------------
@pytest.mark.parametrize(
    "line",
    [
        "from vbsim.signing import model_pki, sign_image",
        "from vbsim.signing.pki import model_pki",
        "from vbsim.signing.authenticode import sign_image",
        "import vbsim.signing",
    ],
)
def test_a_planted_step_importing_the_signing_key_is_caught(line: str) -> None:
    source = _planted(CATALOGUE_A1.read_text(), "_tamper", line)
    found = checker.check_source(source, A1)
    assert any(v.function == "_tamper" and v.rule == "import" for v in found), found


def test_a_planted_step_signing_its_rootkit_is_caught() -> None:
    """The audit's step, as a catalogue module would write it (module-level import, used in
    the step)."""
    source = textwrap.dedent(
        """
        from vbsim.hw.cpu import Cpu
        from vbsim.signing import model_pki, sign_image

        def _sign_and_load(cpu: Cpu, image: bytes) -> bytes:
            return sign_image(image, model_pki().signer("codesign"))
        """
    )
    found = checker.check_source(source, "vbsim.attacks.catalogue.planted")
    assert {v.rule for v in found if v.function == "_sign_and_load"} == {"import"}


def test_a_kernel_module_importing_the_signing_package_is_caught() -> None:
    found = checker.check_source("from vbsim.signing import Signer\n", "vbsim.nt.planted")
    assert [v.rule for v in found] == ["import"]


def test_verification_stays_importable_by_guest_code() -> None:
    """What a kernel contains is not banned: parsing, verification, anchors, public roots."""
    for line in (
        "from vbsim.image import verify_image, parse_image, model_pki",
        "from vbsim.image.anchors import read, verify",
        "from vbsim.image.trust import TrustStore",
    ):
        assert checker.check_source(line + "\n", "vbsim.nt.planted") == [], line
