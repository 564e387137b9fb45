"""``vbsim image sign | verify | inspect`` (osslsigncode interop is tested in tests/image)."""

from __future__ import annotations

import glob
import site
import sys
from pathlib import Path

import pytest

from vbsim.image import (
    EKU_CODE_SIGNING,
    EKU_IUM,
    EKU_WINDOWS_SYSTEM_COMPONENT,
    ImageKind,
    build_image,
    model_pki,
    other_pki,
    requirement_for,
    sign_image,
    strip_signature,
    verify_image,
)
from vbsim.image.policy import TrustletPolicy
from vbsim.ium.images import LSAISO, VMSP, trustlet_image

from .conftest import Run


def unsigned_trustlet() -> bytes:
    policy = TrustletPolicy.standard(4, svn=2, capabilities=3, scenario_id="{8059e825-0000}")
    return build_image(ImageKind.TRUSTLET, "Home.exe", "lsaiso.main", ["lsaiso.main"], policy)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def real_pes() -> list[Path]:
    """Real Windows PEs on this machine: pip's vendored distlib launchers (t64.exe ...)."""
    roots = {*site.getsitepackages(), site.getusersitepackages(), *sys.path}
    patterns = [f"{root}/pip/_vendor/distlib/*.exe" for root in roots]
    patterns.append(
        str(Path(sys.prefix).parent / "*/lib/python3*/site-packages/pip/_vendor/distlib/*.exe")
    )
    found = sorted({Path(p) for pattern in patterns for p in glob.glob(pattern)})
    return [p for p in found if p.name in ("t64.exe", "w64.exe", "t32.exe", "w32.exe")]


@pytest.fixture(scope="module")
def real_pe() -> Path:
    candidates = [p for p in real_pes() if p.name.endswith("64.exe")] or real_pes()
    if not candidates:
        pytest.skip("no real Windows PE (pip's distlib launchers) on this machine")
    return candidates[0]


# -- sign ----------------------------------------------------------------------------------------
def test_sign_in_place_then_verify_as_a_trustlet(cli: Run, tmp_path: Path) -> None:
    path = write(tmp_path, "Home.exe", unsigned_trustlet())
    signed = cli("image", "sign", path, "--json")
    assert signed.exit_code == 0, signed.stderr
    report = signed.json()
    assert report["ok"] and report["output"] == str(path) and report["profile"] == "ium"
    assert {e["oid"] for e in report["signer_ekus"]} == {
        EKU_CODE_SIGNING,
        EKU_WINDOWS_SYSTEM_COMPONENT,
        EKU_IUM,
    }
    data = path.read_bytes()
    assert verify_image(data, model_pki().trust_store(), requirement=requirement_for("trustlet")).ok
    verified = cli("image", "verify", path, "--kind", "trustlet")
    assert verified.exit_code == 0
    assert "signature valid" in verified.stdout and "trustlet" in verified.stdout


@pytest.mark.parametrize(
    ("profile", "trustlet_ok", "level"),
    [("ium", True, 12), ("windows", False, 12), ("codesign", False, 4)],
)
def test_sign_profiles(
    cli: Run, tmp_path: Path, profile: str, trustlet_ok: bool, level: int
) -> None:
    source = write(tmp_path, "in.exe", unsigned_trustlet())
    out = tmp_path / f"out-{profile}.exe"
    signed = cli("image", "sign", source, "-o", out, "--profile", profile, "--json")
    assert signed.exit_code == 0, signed.stderr
    assert source.read_bytes() == unsigned_trustlet()  # -o leaves the input alone
    assert signed.json()["signature"]["signing_level"] == level
    verified = cli("image", "verify", out, "--kind", "trustlet", "--json")
    assert verified.exit_code == (0 if trustlet_ok else 1)
    report = verified.json()
    assert report["valid"] is trustlet_ok
    if not trustlet_ok:
        assert report["failure"] == "missing-eku" and EKU_IUM in report["detail"]
    baseline = cli("image", "verify", out, "--kind", "authenticode", "--json")
    assert baseline.exit_code == 0 and baseline.json()["valid"]


def test_sign_a_real_pe(cli: Run, tmp_path: Path, real_pe: Path) -> None:
    out = tmp_path / "signed.exe"
    signed = cli("image", "sign", real_pe, "-o", out, "--profile", "codesign")
    assert signed.exit_code == 0, signed.stderr
    assert "signature valid" in signed.stdout
    assert cli("image", "verify", out).exit_code == 0


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--profile", "vendor"], ["unknown --profile 'vendor'", "ium, windows, codesign"]),
    ],
)
def test_sign_rejects_an_unknown_profile(
    cli: Run, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    path = write(tmp_path, "in.exe", unsigned_trustlet())
    cli("image", "sign", path, *args).assert_one_line_error(*fragments)
    assert path.read_bytes() == unsigned_trustlet()


def test_sign_rejects_missing_directories_and_non_pe(cli: Run, tmp_path: Path) -> None:
    cli("image", "sign", tmp_path / "nope.exe").assert_one_line_error("nope.exe", "no such file")
    cli("image", "sign", tmp_path).assert_one_line_error("not a regular file")
    text = write(tmp_path, "notes.txt", b"hello, not a PE")
    cli("image", "sign", text).assert_one_line_error("notes.txt", "not a PE image")
    assert text.read_bytes() == b"hello, not a PE"


def test_errors_with_json_also_print_json(cli: Run, tmp_path: Path) -> None:
    outcome = cli("image", "inspect", tmp_path / "nope.exe", "--json")
    outcome.assert_one_line_error("no such file")
    assert outcome.json() == {"ok": False, "error": outcome.stderr.strip().removeprefix("error: ")}


# -- verify --------------------------------------------------------------------------------------
def test_verify_unsigned_prints_the_failed_check(cli: Run, tmp_path: Path) -> None:
    path = write(tmp_path, "u.exe", unsigned_trustlet())
    outcome = cli("image", "verify", path)
    assert outcome.exit_code == 1
    assert "not signed" in outcome.stdout


def test_verify_tampered_image(cli: Run, tmp_path: Path) -> None:
    data = bytearray(trustlet_image(LSAISO))
    data[0xA00 + 12] ^= 1  # the entry thunk in .text
    path = write(tmp_path, "t.exe", bytes(data))
    outcome = cli("image", "verify", path)
    assert outcome.exit_code == 1
    assert "failed check digest-mismatch" in " ".join(outcome.stdout.split())
    report = cli("image", "verify", path, "--json").json()
    assert (report["valid"], report["failure"], report["kind"]) == (
        False,
        "digest-mismatch",
        "trustlet",
    )


def test_verify_other_root_shows_untrusted_root_and_the_chain(cli: Run, tmp_path: Path) -> None:
    path = write(tmp_path, "o.exe", trustlet_image(LSAISO, signer=other_pki().signer("ium")))
    outcome = cli("image", "verify", path)
    assert outcome.exit_code == 1
    assert "untrusted root" in outcome.stdout
    assert "vbsim other ium signer" in outcome.stdout
    assert "Isolated User Mode (1.3.6.1.4.1.311.10.3.37)" in outcome.stdout
    report = cli("image", "verify", path, "--json").json()
    assert report["failure"] == "untrusted-root" and report["untrusted_root"]
    assert not report["trusted_root"]
    chain = report["chain"]
    assert [c["position"] for c in chain] == [
        "signer",
        "intermediate (issued by an untrusted root)",
    ]
    assert EKU_IUM in [e["oid"] for e in chain[0]["ekus"]]
    assert chain[1]["ekus"] is None and chain[1]["is_ca"]


def test_verify_malformed_image_is_invalid(cli: Run, tmp_path: Path) -> None:
    path = write(tmp_path, "junk.exe", b"MZ" + bytes(100))
    report = cli("image", "verify", path, "--json")
    assert report.exit_code == 1 and report.json()["failure"] == "malformed-image"


def test_verify_rejects_an_unknown_kind(cli: Run, tmp_path: Path) -> None:
    path = write(tmp_path, "l.exe", trustlet_image(LSAISO))
    cli("image", "verify", path, "--kind", "enclave").assert_one_line_error(
        "unknown --kind 'enclave'", "trustlet"
    )


def test_verify_image_reports_the_chain_even_for_an_untrusted_root() -> None:
    data = trustlet_image(LSAISO, signer=other_pki().signer("ium"))
    result = verify_image(data, model_pki().trust_store())
    assert result.failure is not None and result.failure.value == "untrusted-root"
    assert [c.subject.split(",")[0] for c in result.chain] == [
        "CN=vbsim other ium signer",
        "CN=vbsim other intermediate CA",
    ]


# -- inspect -------------------------------------------------------------------------------------
def test_inspect_lsaiso(cli: Run, tmp_path: Path) -> None:
    path = write(tmp_path, LSAISO, trustlet_image(LSAISO))
    report = cli("image", "inspect", path, "--json").json()
    assert report["format"] == "PE32+" and report["machine_name"] == "AMD64"
    names = [s["name"] for s in report["sections"]]
    assert ".text" in names and ".tPolicy" in names
    tpolicy = next(s for s in report["sections"] if s["name"] == ".tPolicy")
    assert tpolicy["characteristics"] == "0x40000040"
    assert tpolicy["flags"] == ["initialized-data", "read"]
    assert report["entry"]["guest_routine"] == "lsaiso.main"
    exports = {e["name"]: e for e in report["exports"]}
    assert set(exports) == {"lsaiso.main", "s_IumPolicyMetadata"}
    assert exports["lsaiso.main"]["guest_routine"] == "lsaiso.main"
    assert report["version"]["strings"]["OriginalFilename"] == LSAISO
    assert report["version"]["svn"] == 7 and report["kind"] == "trustlet"
    policy = report["tpolicy"]
    assert (policy["export"], policy["application_id"], policy["trustlet"]) == (
        "s_IumPolicyMetadata",
        1,
        "LSAISO",
    )
    assert policy["metadata_version"] == 1
    assert [(e["policy"], e["type"], e["value"]) for e in policy["entries"]] == [
        ("ETW", "UINT32", 1),
        ("DEBUG", "UINT32", 0),
        ("CRASH_DUMP", "UINT32", 0),
        ("SVN", "UINT32", 7),
    ]
    signature = report["signature"]
    assert signature["valid"] and signature["kind"] == "trustlet"
    assert signature["trusted_root"] and signature["signing_level"] == 12
    chain = signature["chain"]
    assert [c["position"] for c in chain] == ["signer", "intermediate", "trusted root"]
    assert {e["oid"] for e in chain[0]["ekus"]} == {
        EKU_CODE_SIGNING,
        EKU_WINDOWS_SYSTEM_COMPONENT,
        EKU_IUM,
    }
    assert report["checksum"]["matches"]


def test_inspect_shows_every_policy_entry_in_rich_output(cli: Run, tmp_path: Path) -> None:
    home = sign_image(unsigned_trustlet(), model_pki().signer("ium"))
    path = write(tmp_path, "Home.exe", home)
    outcome = cli("image", "inspect", path)
    assert outcome.exit_code == 0
    text = outcome.stdout
    for expected in ("ETW", "DEBUG", "CRASH_DUMP", "SVN", "CAPABILITY", "SCENARIO_ID"):
        assert expected in text
    assert "{8059e825-0000}" in text and "ApplicationId (trustlet ID) 4" in " ".join(text.split())
    report = cli("image", "inspect", path, "--json").json()
    entries = {e["policy"]: e for e in report["tpolicy"]["entries"]}
    assert entries["CAPABILITY"]["type"] == "UINT64" and entries["CAPABILITY"]["value"] == 3
    assert entries["SCENARIO_ID"]["type"] == "ANSI_STRING"


def test_inspect_vmsp_parent_sd(cli: Run, tmp_path: Path) -> None:
    path = write(tmp_path, VMSP, trustlet_image(VMSP))
    entries = cli("image", "inspect", path, "--json").json()["tpolicy"]["entries"]
    parent = next(e for e in entries if e["policy"] == "PARENT_SD")
    assert (parent["type"], parent["value"]) == ("UNICODE_STRING", "S-1-5-83-0")


def test_inspect_a_real_windows_pe(cli: Run, real_pe: Path) -> None:
    outcome = cli("image", "inspect", real_pe, "--json")
    assert outcome.exit_code == 0, outcome.stderr
    report = outcome.json()
    assert report["format"] in ("PE32", "PE32+")
    assert report["machine_name"] in ("AMD64", "i386")
    assert ".text" in [s["name"] for s in report["sections"]]
    assert report["tpolicy"] is None and not report["trustlet"]
    assert report["version"] is not None and report["version"]["strings"]["OriginalFilename"]
    assert report["signature"]["failure"] == "no-signature" and report["signature"]["chain"] == []
    rich = cli("image", "inspect", real_pe)
    assert rich.exit_code == 0
    assert "not a trustlet" in rich.stdout and "not signed" in rich.stdout


def test_inspect_a_real_pe_signed_by_another_root(cli: Run, tmp_path: Path, real_pe: Path) -> None:
    data = sign_image(real_pe.read_bytes(), other_pki().signer("windows"))
    path = write(tmp_path, "foreign.exe", data)
    outcome = cli("image", "inspect", path)
    assert outcome.exit_code == 0
    assert "untrusted root" in outcome.stdout
    assert "Windows System Component Verification (1.3.6.1.4.1.311.10.3.6)" in outcome.stdout
    signature = cli("image", "inspect", path, "--json").json()["signature"]
    assert signature["failure"] == "untrusted-root" and len(signature["chain"]) == 2


def test_inspect_an_unsigned_stripped_trustlet(cli: Run, tmp_path: Path) -> None:
    path = write(tmp_path, "s.exe", strip_signature(trustlet_image(LSAISO)))
    report = cli("image", "inspect", path, "--json").json()
    assert report["tpolicy"]["application_id"] == 1
    assert report["signature"]["signed"] is False


def test_inspect_rejects_non_pe(cli: Run, tmp_path: Path) -> None:
    path = write(tmp_path, "x.bin", b"\x7fELF" + bytes(60))
    cli("image", "inspect", path).assert_one_line_error("x.bin", "not a PE image")


# -- the CLI's option choices follow the library ---------------------------------------------------
def test_kind_and_profile_choices_match_the_library() -> None:
    from vbsim.cli.image_cmd import AUTHENTICODE, KIND_CHOICES, PROFILE_CHOICES
    from vbsim.image.pki import PROFILES

    assert (*(kind.value for kind in ImageKind), AUTHENTICODE) == KIND_CHOICES
    assert tuple(PROFILES) == PROFILE_CHOICES


def test_importing_the_cli_modules_does_not_load_lief() -> None:
    """``vbsim --help`` stays fast: vbsim.image (and LIEF) load only when a command runs."""
    import subprocess

    code = (
        "import sys, vbsim.cli.image_cmd, vbsim.cli.trustlet_cmd; "
        "print('lief' in sys.modules, 'vbsim.image' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
