"""SKCI admission of trustlets (vbs-internals §3.1, §3.4, §3.6, Appendix A item 6).

Each refusal names the exact NTSTATUS NT gets back from CREATE_PROCESS and the check SKCI names
in the trace (``ium`` / ``skci.<check>``), and leaves neither an NT (shadow) process nor a
secure process behind.  The statuses are the model's choices for what the reference marks [U]
(see ``vbsim.sk.ium.skci``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vbsim.boot.trustlets import trustlet_image
from vbsim.image import (
    EKU_CODE_SIGNING,
    ImageKind,
    ParsedImage,
    build_image,
    parse_image,
    strip_signature,
)
from vbsim.image.policy import PolicyId
from vbsim.ium.images import LSAISO
from vbsim.ntstatus import NtStatus
from vbsim.policy import Component
from vbsim.signing import model_pki, other_pki, sign_image
from vbsim.sk import objects

from . import kit
from .kit import Machine

HASH = NtStatus.INVALID_IMAGE_HASH
FORMAT = NtStatus.INVALID_IMAGE_FORMAT
DENIED = NtStatus.ACCESS_DENIED


@pytest.fixture(scope="module")
def lsaiso() -> bytes:
    return trustlet_image(LSAISO)


@pytest.fixture(scope="module")
def hardened() -> Iterator[Machine]:
    m = kit.booted("hardened")
    yield m
    m.close()


def counts(machine: Machine) -> tuple[int, int, int]:
    """NT processes, SK secure processes, SK handles."""
    sk = machine.system.sk
    assert sk is not None
    return len(machine.system.processes()), len(machine.secure_processes()), len(_handles(machine))


def _handles(machine: Machine) -> dict[int, tuple[int, int]]:
    """The SK's handle table as it stands in VTL1 RAM: handle → (type index, object VA)."""
    sk, ram = machine.system.sk, machine.system.machine
    assert sk is not None and ram is not None
    return objects.host_entries(ram.ram.read, sk)


def refused(machine: Machine, image: bytes, trustlet_id: int, status: int, check: str) -> str:
    """Start ``image``; assert the refusal, its check in the trace, and that nothing was
    created.  Returns the trace's detail text."""
    before = counts(machine)
    mark = machine.mark()
    got, process = machine.start(image, trustlet_id, LSAISO)
    assert NtStatus.name_of(got) == NtStatus.name_of(status)
    assert process is None
    assert counts(machine) == before
    skci = machine.skci_events(mark)
    assert [e.mechanism for e in skci] == [f"skci.{check}"]
    # Every check before the refusing one ran and passed, in SKCI's order (and none after it).
    passed = machine.skci_passed(mark)
    assert check not in passed and passed == [c for c in passed if c != check]
    event = skci[0]
    assert event.outcome == "refused" and event.vtl == 1 and event.cpl == 0
    assert event.detail["status"] == NtStatus.name_of(status)
    assert event.detail["trustlet_id"] == trustlet_id
    assert not [e for e in machine.events_since(mark, "ium") if e.mechanism == "create-process"]
    return str(event.detail["detail"])


# -- the untouched image is admitted (the control for every refusal below) --------------------
def test_signed_lsaiso_is_admitted(machine: Machine, lsaiso: bytes) -> None:
    before = counts(machine)
    mark = machine.mark()
    process = machine.started(lsaiso, 1, LSAISO)
    assert [e.mechanism for e in machine.skci_events(mark)] == ["skci.admitted"]
    nt_count, sk_count, _ = counts(machine)
    assert (nt_count, sk_count) == (before[0] + 1, before[1] + 1)
    assert process.trustlet_id == 1


def test_a_refused_image_creates_no_nt_process_and_no_sk_process(
    machine: Machine, lsaiso: bytes
) -> None:
    """The rule every refusal below also checks: NT's process list, the SK's secure processes
    and its handle table are exactly as before, and no ``create-process`` event exists."""
    sk = machine.system.sk
    assert sk is not None
    handles = _handles(machine)
    threads = _cookies(machine)
    refused(machine, strip_signature(lsaiso), 1, HASH, "signature")
    refused(machine, lsaiso, 3, DENIED, "trustlet-id")
    assert _handles(machine) == handles
    assert _cookies(machine) == threads


# -- one tampered byte, anywhere ---------------------------------------------------------------
def _tpolicy(parsed: ParsedImage) -> int:
    section = parsed.section(".tPolicy")
    assert section is not None
    return section.raw_offset


def _etw_value(parsed: ParsedImage) -> int:
    """Low byte of the first policy entry's value (ETW, a UINT32: any byte value still parses)."""
    assert parsed.policy is not None and parsed.policy.entries[0].policy_id == PolicyId.ETW
    return _tpolicy(parsed) + 16 + 8


def _cert(parsed: ParsedImage, where: float) -> int:
    assert parsed.certificate_table is not None
    offset, size = parsed.certificate_table
    return offset + int(size * where)


def _pe_header(image: bytes) -> int:
    return int(struct.unpack_from("<I", image, 0x3C)[0])


Locator = Callable[[bytes, ParsedImage], int]
TAMPER: list[tuple[str, Locator, NtStatus, str, tuple[str, ...]]] = [
    (
        ".text (the entry thunk)",
        lambda i, p: (p.section(".text") or p.sections[0]).raw_offset + 12,
        HASH,
        "signature",
        ("digest-mismatch",),
    ),
    (
        ".tPolicy (the ETW entry's value)",
        lambda i, p: _etw_value(p),
        HASH,
        "signature",
        ("digest-mismatch",),
    ),
    (
        ".tPolicy (slack after the metadata)",
        lambda i, p: _tpolicy(p) + 0x1F0,
        HASH,
        "signature",
        ("digest-mismatch",),
    ),
    # ApplicationId is checked against the requested ID before the signature (App. A item 6).
    (
        ".tPolicy (ApplicationId)",
        lambda i, p: _tpolicy(p) + 8,
        DENIED,
        "trustlet-id",
        ("requested 1",),
    ),
    (
        ".rsrc (the version resource)",
        lambda i, p: (p.section(".rsrc") or p.sections[0]).raw_offset + 0x60,
        HASH,
        "signature",
        ("digest-mismatch",),
    ),
    ("DOS stub", lambda i, p: 0x50, HASH, "signature", ("digest-mismatch",)),
    (
        "COFF header TimeDateStamp",
        lambda i, p: _pe_header(i) + 8,
        HASH,
        "signature",
        ("digest-mismatch",),
    ),
    (
        "optional header CheckSum",
        lambda i, p: p.checksum_offset,
        HASH,
        "signature",
        ("checksum-mismatch",),
    ),
    (
        "certificate-table directory entry",
        lambda i, p: (p.security_entry_offset or 0) + 4,
        HASH,
        "signature",
        ("malformed-certificate-table",),
    ),
    (
        "WIN_CERTIFICATE header",
        lambda i, p: _cert(p, 0) + 5,
        HASH,
        "signature",
        ("malformed-certificate-table",),
    ),
    (
        "a certificate inside the PKCS#7",
        lambda i, p: _cert(p, 0.5),
        HASH,
        "signature",
        ("malformed-pkcs7", "bad-signature", "signer-not-found", "untrusted-root", "invalid-chain"),
    ),
    (
        "the signature value",
        lambda i, p: _cert(p, 1) - 24,
        HASH,
        "signature",
        ("bad-signature", "malformed-pkcs7"),
    ),
]


@pytest.mark.parametrize(
    ("where", "locate", "status", "check", "failures"),
    TAMPER,
    ids=[case[0] for case in TAMPER],
)
def test_one_tampered_byte_is_refused(
    machine: Machine,
    lsaiso: bytes,
    where: str,
    locate: Locator,
    status: NtStatus,
    check: str,
    failures: tuple[str, ...],
) -> None:
    offset = locate(lsaiso, parse_image(lsaiso))
    assert 0 <= offset < len(lsaiso), where
    tampered = bytearray(lsaiso)
    tampered[offset] ^= 0x5A
    detail = refused(machine, bytes(tampered), 1, status, check)
    assert detail.startswith(failures), detail


def test_tampered_e_lfanew_is_not_an_image(machine: Machine, lsaiso: bytes) -> None:
    tampered = bytearray(lsaiso)
    tampered[0x3C] ^= 0x40
    refused(machine, bytes(tampered), 1, FORMAT, "format")


# -- signatures ----------------------------------------------------------------------------------
def test_unsigned_trustlet_is_refused(machine: Machine, lsaiso: bytes) -> None:
    detail = refused(machine, strip_signature(lsaiso), 1, HASH, "signature")
    assert detail.startswith("no-signature")


def test_signer_without_the_ium_eku_is_refused(machine: Machine) -> None:
    signer = model_pki().make_leaf([EKU_CODE_SIGNING])
    detail = refused(machine, trustlet_image(LSAISO, signer=signer), 1, HASH, "signature")
    assert detail.startswith("missing-eku") and "1.3.6.1.4.1.311.10.3.37" in detail


def test_chain_to_another_root_is_refused(machine: Machine) -> None:
    image = trustlet_image(LSAISO, signer=other_pki().signer("ium"))
    detail = refused(machine, image, 1, HASH, "signature")
    assert detail.startswith("untrusted-root") and "vbsim other root" in detail


# -- identity ------------------------------------------------------------------------------------
def test_requested_id_must_equal_the_signed_application_id(machine: Machine, lsaiso: bytes) -> None:
    detail = refused(machine, lsaiso, 2, DENIED, "trustlet-id")
    assert detail == "requested 2, signed 1"


def test_id_off_the_allow_list_is_refused_even_when_it_matches(machine: Machine) -> None:
    image = kit.test_image(77, name="Test77.exe")
    assert parse_image(image).policy is not None
    detail = refused(machine, image, 77, DENIED, "allow-list")
    assert "77" in detail


def test_a_pe_without_tpolicy_is_not_a_trustlet(machine: Machine) -> None:
    app = build_image(ImageKind.APPLICATION, "app.exe", kit.ENTRY, [kit.ENTRY])
    image = sign_image(app, model_pki().signer("ium"))  # validly signed, IUM EKU and all
    detail = refused(machine, image, 1, FORMAT, "tpolicy")
    assert detail == "no .tPolicy section"


# -- downgrade (Windows Downdate, vbs-internals §3.6 last bullet, §6 A15) ----------------------
OLD_LSAISO = Component(version="10.0.19041.1", svn=3)


def test_downgraded_lsaiso_is_accepted_without_a_revocation_policy(machine: Machine) -> None:
    image = trustlet_image(LSAISO, component=OLD_LSAISO)
    parsed = parse_image(image)
    assert parsed.version is not None and parsed.version.numbers == (10, 0, 19041, 1)
    assert parsed.svn == 3
    mark = machine.mark()
    process = machine.started(image, 1, LSAISO)
    assert [e.mechanism for e in machine.skci_events(mark)] == ["skci.admitted"]
    assert process.trustlet_id == 1


def test_downgraded_lsaiso_is_refused_under_the_revocation_floor(hardened: Machine) -> None:
    image = trustlet_image(LSAISO, component=OLD_LSAISO)
    detail = refused(hardened, image, 1, NtStatus.IMAGE_CERT_REVOKED, "revocation")
    assert "LsaIso.exe 10.0.19041.1 < 10.0.26100.2314" in detail


def test_current_lsaiso_is_admitted_under_the_revocation_floor(hardened: Machine) -> None:
    process = hardened.started(trustlet_image(LSAISO), 1, LSAISO)
    assert process.trustlet_id == 1


def test_an_svn_below_the_floor_is_refused_even_at_the_current_version(
    hardened: Machine,
) -> None:
    image = trustlet_image(LSAISO, component=Component(svn=6))
    detail = refused(hardened, image, 1, NtStatus.IMAGE_CERT_REVOKED, "revocation")
    assert "SVN 6 < 7" in detail


# -- no mutation of a signed trustlet is ever admitted -----------------------------------------
Mutation = tuple[str, int, bytes]


def _apply(data: bytes, mutation: Mutation) -> bytes:
    kind, where, blob = mutation
    where %= len(data) + 1
    if kind == "xor":
        index = where % len(data)
        return data[:index] + bytes([data[index] ^ (blob[0] or 0xFF)]) + data[index + 1 :]
    if kind == "overwrite":
        return data[:where] + blob + data[where + len(blob) :]
    if kind == "insert":
        return data[:where] + blob + data[where:]
    if kind == "delete":
        return data[:where] + data[where + len(blob) :]
    if kind == "truncate":
        return data[: max(where, 1)]
    return data + blob


@st.composite
def mutated_images(draw: st.DrawFn, original: bytes) -> bytes:
    parsed = parse_image(original)
    regions = [(0, len(original)), (0, 0x400)]
    regions += [(s.raw_offset, s.raw_offset + s.raw_size) for s in parsed.sections]
    if parsed.certificate_table is not None:
        regions.append((parsed.certificate_table[0], len(original)))
    where = st.one_of(*(st.integers(start, end - 1) for start, end in regions))
    kinds = st.sampled_from(["xor", "xor", "overwrite", "insert", "delete", "truncate", "append"])
    mutations = draw(
        st.lists(
            st.tuples(kinds, where, st.binary(min_size=1, max_size=16)), min_size=1, max_size=3
        )
    )
    data = original
    for mutation in mutations:
        data = _apply(data, mutation)
    return data


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_mutated_signed_trustlet_is_never_admitted(machine: Machine, data: st.DataObject) -> None:
    original = kit.test_image(4)
    image = data.draw(mutated_images(original), label="image")
    assume(image != original)
    before = counts(machine)
    mark = machine.mark()
    status, process = machine.start(image, 4)
    assert process is None
    assert status != NtStatus.SUCCESS
    assert counts(machine) == before
    assert not [e for e in machine.skci_events(mark) if e.outcome == "admitted"]


def _cookies(machine: Machine) -> dict[int, int]:
    """Every process's EPROCESS.SecureThreadCookie as RAM holds it."""
    from vbsim.nt.process import host_secure_thread_cookie

    assert machine.system.machine is not None
    ram = machine.system.machine.ram
    processes = machine.system.processes()
    return {pid: host_secure_thread_cookie(ram, p.eprocess) for pid, p in processes.items()}
