"""``vbsim trustlet list | run``."""

from __future__ import annotations

import struct
from pathlib import Path

from vbsim.boot.trustlets import trustlet_image
from vbsim.cli.trustlet_cmd import SKCI_CHECKS
from vbsim.hw.code import guest_code
from vbsim.hw.vp import VirtualProcessor
from vbsim.image import ImageKind, build_image
from vbsim.ium import lsaiso
from vbsim.ium.images import LSAISO, VMSP
from vbsim.policy import Component
from vbsim.signing import model_pki, other_pki, sign_image

from .conftest import Run

ECHO = "tests.cli.echo"


@guest_code(ECHO)
def _echo(vp: VirtualProcessor, message: int, length: int, reply: int) -> int:
    vp.write(reply, vp.read(message, length))
    return length


def protect_hex(owf: bytes = bytes(range(16))) -> str:
    message = struct.pack("<I", lsaiso.OP_PROTECT) + b"alice".ljust(32, b"\0") + owf + bytes(32)
    return message.hex()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def checks(report: dict[str, object]) -> dict[str, str]:
    admission = report["admission"]
    assert isinstance(admission, dict)
    return {c["check"]: c["result"] for c in admission["checks"]}


# -- list ----------------------------------------------------------------------------------------
def test_list(cli: Run) -> None:
    outcome = cli("trustlet", "list")
    assert outcome.exit_code == 0
    assert LSAISO in outcome.stdout and VMSP in outcome.stdout
    report = cli("trustlet", "list", "--json").json()
    rows = {row["image"]: row for row in report["trustlets"]}
    assert set(rows) == {LSAISO, VMSP}
    assert (rows[LSAISO]["trustlet_id"], rows[VMSP]["trustlet_id"]) == (1, 2)
    assert rows[LSAISO]["policy_application_id"] == 1
    lsa_policy = {p["policy"]: p["value"] for p in rows[LSAISO]["policy"]}
    assert lsa_policy == {"ETW": 1, "DEBUG": 0, "CRASH_DUMP": 0, "SVN": 7}
    vmsp_policy = {p["policy"]: p["value"] for p in rows[VMSP]["policy"]}
    assert vmsp_policy["CAPABILITY"] == 2 and vmsp_policy["PARENT_SD"] == "S-1-5-83-0"
    assert report["allow_list"] == [1, 2, 3, 4, 5]
    assert all(row["allow_listed"] for row in rows.values())
    assert [r["trustlet_id"] for r in report["allow_listed_without_image"]] == [3, 4, 5]


# -- run: admitted -------------------------------------------------------------------------------
def test_run_lsaiso_by_name(cli: Run) -> None:
    outcome = cli("trustlet", "run", LSAISO, "--message", protect_hex(), "--json")
    assert outcome.exit_code == 0, outcome.stderr
    report = outcome.json()
    assert report["trustlet_id"] == 1 and report["image"]["name"] == LSAISO
    admission = report["admission"]
    assert admission["admitted"] and admission["status_name"] == "STATUS_SUCCESS"
    mechanisms = [e["mechanism"] for e in admission["events"]]
    assert mechanisms[-1] == "skci.admitted" and "skci.signature" in mechanisms
    assert all(e["kind"] == "ium" and e["vtl"] == 1 for e in admission["events"])
    assert checks(report) == dict.fromkeys(SKCI_CHECKS, "passed")
    run = report["run"]
    assert run["status_name"] == "STATUS_SUCCESS"
    reply = bytes.fromhex(run["reply"])
    assert reply.startswith(lsaiso.BLOB_MAGIC) and bytes(range(16)) not in reply
    view = {row["item"].split(" (")[0]: row for row in report["vtl0_view"]}
    assert view["process object"]["visible"] == "yes"
    assert "trustlet ID 1" in view["NtQueryInformationProcess class 0x3f"]["result"]
    assert view["thread"]["visible"] == "yes"
    assert view["image pages"]["visible"] == "yes"
    assert view["image pages"]["result"].endswith(": 4d5a9000" + "0300000004000000ff000000")
    assert view["private memory"]["visible"] == "no"
    assert "STATUS_ACCESS_VIOLATION" in view["private memory"]["result"]
    for item in ("debugger attach", "VTL1 thread context", "mailbox slot 0 without the key"):
        assert (view[item]["visible"], view[item]["result"]) == ("no", "STATUS_ACCESS_DENIED")


def test_run_rich_output(cli: Run) -> None:
    outcome = cli("trustlet", "run", "lsaiso.exe")  # names match case-insensitively
    assert outcome.exit_code == 0, outcome.stderr
    text = " ".join(outcome.stdout.split())
    assert "admitted" in text and "skci.admitted" in text
    assert "what VTL0 can see of it" in text
    assert "STATUS_ACCESS_VIOLATION" in text  # the private-memory row
    # Each SKCI check is shown once (issue 12): in the table, naming its trace event; the trace
    # lines after the table are only the events the table does not show.
    assert "skci.format" not in text and "skci.page-hash" not in text
    assert text.count(" format ") == 1 and "trace #" in text


def test_run_a_debuggable_trustlet_file(cli: Run, tmp_path: Path) -> None:
    image = trustlet_image("Dbg.exe", trustlet_id=5, entry=ECHO, debug=True)
    path = write(tmp_path, "Dbg.exe", image)
    report = cli("trustlet", "run", path, "--message", "68656c6c6f", "--json").json()
    assert report["trustlet_id"] == 5  # taken from the image's policy
    assert bytes.fromhex(report["run"]["reply"]) == b"hello"
    view = {row["item"].split(" (")[0]: row for row in report["vtl0_view"]}
    assert view["debugger attach"]["visible"] == "yes"
    assert view["VTL1 thread context"]["result"] == "STATUS_SUCCESS"


# -- run: refused --------------------------------------------------------------------------------
def test_run_another_root_is_refused_at_the_signature_check(cli: Run, tmp_path: Path) -> None:
    path = write(tmp_path, "o.exe", trustlet_image(LSAISO, signer=other_pki().signer("ium")))
    outcome = cli("trustlet", "run", path, "--json")
    assert outcome.exit_code == 1
    report = outcome.json()
    admission = report["admission"]
    assert not admission["admitted"] and admission["status_name"] == "STATUS_INVALID_IMAGE_HASH"
    assert checks(report) == {
        "format": "passed",
        "tpolicy": "passed",
        "policy-export": "passed",
        "trustlet-id": "passed",
        "signature": "failed",
        "revocation": "not reached",
        "allow-list": "not reached",
        "page-hash": "not reached",
    }
    failed = next(c for c in admission["checks"] if c["result"] == "failed")
    assert failed["from_trace"] and failed["detail"].startswith("untrusted-root")
    assert report["process"] is None and report["run"] is None and report["vtl0_view"] == []
    rich = cli("trustlet", "run", path)
    assert rich.exit_code == 1 and "refused" in rich.stdout and "untrusted-root" in rich.stdout


def test_run_with_the_wrong_id(cli: Run) -> None:
    report = cli("trustlet", "run", LSAISO, "--id", "2", "--json")
    assert report.exit_code == 1
    assert checks(report.json())["trustlet-id"] == "failed"
    assert report.json()["admission"]["status_name"] == "STATUS_ACCESS_DENIED"


def test_run_a_non_trustlet(cli: Run, tmp_path: Path) -> None:
    app = build_image(ImageKind.APPLICATION, "app.exe", ECHO, [ECHO])
    path = write(tmp_path, "app.exe", sign_image(app, model_pki().signer("ium")))
    cli("trustlet", "run", path).assert_one_line_error("no .tPolicy", "--id")
    report = cli("trustlet", "run", path, "--id", "4", "--json")
    assert report.exit_code == 1
    assert checks(report.json())["tpolicy"] == "failed"
    assert report.json()["admission"]["status_name"] == "STATUS_INVALID_IMAGE_FORMAT"


def test_run_a_downgraded_lsaiso_under_hardened(cli: Run, tmp_path: Path) -> None:
    old = trustlet_image(LSAISO, component=Component("10.0.19041.1", 3))
    path = write(tmp_path, LSAISO, old)
    assert cli("trustlet", "run", path, "--json").exit_code == 0  # "vbs": no floor
    report = cli("trustlet", "run", path, "--preset", "hardened", "--json")
    assert report.exit_code == 1
    assert report.json()["admission"]["status_name"] == "STATUS_IMAGE_CERT_REVOKED"
    assert checks(report.json())["revocation"] == "failed"


def test_run_without_vbs(cli: Run) -> None:
    report = cli("trustlet", "run", VMSP, "--preset", "vbs-off", "--json")
    assert report.exit_code == 1
    admission = report.json()["admission"]
    assert admission["status_name"] == "STATUS_NOT_SUPPORTED" and admission["checks"] == []


def test_run_a_trustlet_whose_code_faults(cli: Run, tmp_path: Path) -> None:
    """Its entry names a routine nobody registered: #UD at VTL1 CPL3 ends its thread."""
    image = trustlet_image("Ghost.exe", trustlet_id=4, entry="tests.cli.no-such-routine")
    path = write(tmp_path, "Ghost.exe", image)
    outcome = cli("trustlet", "run", path, "--json")
    assert outcome.exit_code == 1
    report = outcome.json()
    assert report["admission"]["admitted"]
    assert report["run"]["status_name"] == "STATUS_ACCESS_VIOLATION"
    assert report["run"]["reply"] == ""


# -- run: bad input ------------------------------------------------------------------------------
def test_run_bad_input(cli: Run, tmp_path: Path) -> None:
    cli("trustlet", "run", "Nope.exe").assert_one_line_error("Nope.exe", LSAISO, VMSP)
    cli("trustlet", "run", LSAISO, "--preset", "turbo").assert_one_line_error("turbo", "hardened")
    cli("trustlet", "run", LSAISO, "--message", "xyz").assert_one_line_error("--message")
    cli("trustlet", "run", LSAISO, "--message", "00" * 4097).assert_one_line_error("4096")
    cli("trustlet", "run", tmp_path).assert_one_line_error("not a regular file")
    outcome = cli("trustlet", "run", LSAISO, "--id", "-1", "--json")
    outcome.assert_one_line_error("--id")
    assert outcome.json()["ok"] is False


# -- message formats (issue 12: list says what each trustlet accepts) -----------------------------
def build(message: dict[str, object], rest: bytes = b"") -> str:
    """A message made from the listed layout alone: op, then each field (zeros, or ``rest`` for
    the variable-length one)."""
    data = struct.pack("<I", message["op"])
    fields = message["fields"]
    assert isinstance(fields, list)
    for field in fields:
        data += rest if field["size"] is None else bytes(field["size"])
    return data.hex()


def test_list_says_what_each_trustlet_accepts(cli: Run) -> None:
    report = cli("trustlet", "list", "--json").json()
    formats = {row["image"]: {m["name"]: m for m in row["messages"]} for row in report["trustlets"]}
    assert set(formats[LSAISO]) == {"PROTECT", "RESPOND"}
    assert set(formats[VMSP]) == {"SEAL", "UNSEAL", "PUBLISH"}
    assert formats[LSAISO]["PROTECT"]["op"] == lsaiso.OP_PROTECT
    assert formats[LSAISO]["PROTECT"]["layout"] == (
        "op:u32=1, user (NUL-padded)[32], NT OWF[16], Kerberos key[32]"
    )
    # Every layout is in one notation: op first, u32 fields named so, the rest as [n].
    for messages in formats.values():
        for message in messages.values():
            assert message["layout"].startswith(f"op:u32={message['op']}, ")
    # A message built from the listed layout is one the trustlet accepts.
    protect = cli(
        "trustlet", "run", LSAISO, "--message", build(formats[LSAISO]["PROTECT"]), "--json"
    )
    assert protect.exit_code == 0
    assert bytes.fromhex(protect.json()["run"]["reply"]).startswith(lsaiso.BLOB_MAGIC)
    seal = cli(
        "trustlet", "run", VMSP, "--message", build(formats[VMSP]["SEAL"], b"x" * 16), "--json"
    )
    assert seal.exit_code == 0 and len(seal.json()["run"]["reply"]) > 32
    publish = build(formats[VMSP]["PUBLISH"], b"hello")
    assert cli("trustlet", "run", VMSP, "--message", publish, "--json").json()["run"]["reply"] == ""
    text = " ".join(cli("trustlet", "list").stdout.split())
    assert "messages each accepts" in text and "RESPOND" in text and "PUBLISH" in text


# -- export --------------------------------------------------------------------------------------
def test_export_writes_the_signed_image(cli: Run, tmp_path: Path) -> None:
    import shutil
    import subprocess

    from vbsim.image import parse_image

    target = tmp_path / "out[red].exe"
    outcome = cli("trustlet", "export", "lsaiso.exe", "-o", target, "--json")
    assert outcome.exit_code == 0, outcome.stderr
    summary = outcome.json()
    assert summary["image"] == LSAISO and summary["bytes"] == target.stat().st_size
    parsed = parse_image(target.read_bytes())
    assert parsed.policy is not None and parsed.policy.application_id == 1
    verified = cli("image", "verify", target, "--json")
    assert verified.exit_code == 0, verified.stdout
    rich = cli("trustlet", "export", VMSP, "-o", tmp_path / "v.exe")
    assert "out[red]" not in rich.stdout and "osslsigncode verify -CAfile" in rich.stdout
    if shutil.which("osslsigncode"):
        done = subprocess.run(
            ["osslsigncode", "verify", "-CAfile", summary["model_root"], "-in", str(target)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0 and "Succeeded" in done.stdout, done.stdout + done.stderr


def test_export_bad_input(cli: Run, tmp_path: Path) -> None:
    cli("trustlet", "export", "Nope[/].exe", "-o", tmp_path / "x").assert_one_line_error(
        "Nope[/].exe", LSAISO, VMSP
    )
    cli("trustlet", "export", LSAISO, "-o", tmp_path).assert_one_line_error("is a directory")
    cli("trustlet", "export", LSAISO, "-o", tmp_path / "no" / "x.exe").assert_one_line_error(
        "does not exist"
    )
    cli("trustlet", "export", LSAISO, "-o", "/dev/full").assert_one_line_error("not a regular file")
    cli(
        "trustlet", "export", LSAISO, "-o", tmp_path / "x", "--preset", "turbo"
    ).assert_one_line_error("turbo")
    # A symlink is written through: the link stays, its target gets the image.
    real = tmp_path / "real.exe"
    real.write_bytes(b"old")
    link = tmp_path / "link.exe"
    link.symlink_to(real)
    assert cli("trustlet", "export", LSAISO, "-o", link).exit_code == 0
    assert link.is_symlink() and real.read_bytes()[:2] == b"MZ"
