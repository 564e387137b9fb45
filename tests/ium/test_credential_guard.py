"""Credential Guard semantics (vbs-internals §5.3, §6 A21): LsaIso keeps the NT OWF in its own
VTL1 memory and gives lsass only an opaque blob; it will *use* the credential (compute an NTLM
response) for whoever holds a valid blob, and nothing for a tampered one."""

from __future__ import annotations

import struct

import pytest

from vbsim.boot.trustlets import trustlet_image
from vbsim.ium import lsaiso
from vbsim.ium.images import LSAISO
from vbsim.nt.process import Process
from vbsim.ntstatus import NtStatus

from .kit import Machine

OWF = bytes.fromhex("8846f7eaee8fb117ad06bdd830b7586c")  # NT OWF of "password" (MS-NLMP)
KERBEROS = bytes(range(32))
CHALLENGE = b"\x01\x23\x45\x67\x89\xab\xcd\xef"


@pytest.fixture(scope="module")
def lsa(machine: Machine) -> Process:
    return machine.started(trustlet_image(LSAISO), 1, LSAISO)


def protect(machine: Machine, process: Process, user: bytes = b"alice") -> bytes:
    message = struct.pack("<I", lsaiso.OP_PROTECT) + user.ljust(32, b"\0") + OWF + KERBEROS
    run = machine.run(process, message)
    assert run.status == NtStatus.SUCCESS
    return run.reply


def respond(machine: Machine, process: Process, blob: bytes, challenge: bytes = CHALLENGE) -> bytes:
    message = struct.pack("<II", lsaiso.OP_RESPOND, len(blob)) + blob + challenge
    run = machine.run(process, message)
    assert run.status == NtStatus.SUCCESS
    return run.reply


def test_protect_returns_a_blob_without_the_owf(machine: Machine, lsa: Process) -> None:
    blob = protect(machine, lsa)
    assert blob.startswith(lsaiso.BLOB_MAGIC)
    assert OWF not in blob and KERBEROS not in blob
    assert b"alice" not in blob  # even the user name is inside the encrypted part
    for i in range(len(OWF) - 3):  # no 4-byte run of the OWF either
        assert OWF[i : i + 4] not in blob


def test_the_same_credential_protects_to_a_different_blob_each_time(
    machine: Machine, lsa: Process
) -> None:
    assert protect(machine, lsa) != protect(machine, lsa)


def test_respond_computes_the_right_ntlm_response(machine: Machine, lsa: Process) -> None:
    blob = protect(machine, lsa)
    response = respond(machine, lsa, blob)
    assert response == lsaiso.ntlm_response(OWF, CHALLENGE)
    assert len(response) == 24
    other = respond(machine, lsa, blob, b"\xff" * 8)
    assert other == lsaiso.ntlm_response(OWF, b"\xff" * 8) != response


@pytest.mark.parametrize("where", [0, len(lsaiso.BLOB_MAGIC), len(lsaiso.BLOB_MAGIC) + 14, -1])
def test_a_tampered_blob_gets_no_response(machine: Machine, lsa: Process, where: int) -> None:
    blob = bytearray(protect(machine, lsa))
    blob[where] ^= 0x01
    assert respond(machine, lsa, bytes(blob)) == b""


def test_a_truncated_or_foreign_blob_gets_no_response(machine: Machine, lsa: Process) -> None:
    blob = protect(machine, lsa)
    assert respond(machine, lsa, blob[:-1]) == b""
    assert respond(machine, lsa, lsaiso.BLOB_MAGIC + bytes(40)) == b""


def test_another_lsaiso_instance_cannot_use_the_blob_across_ids(machine: Machine) -> None:
    """A blob is bound to LsaIso's identity (ID 1): the same code under another trustlet ID
    (a home-made image signed as ID 4) cannot open it."""
    genuine = machine.started(trustlet_image(LSAISO), 1, LSAISO)
    blob = protect(machine, genuine)
    impostor_image = trustlet_image(LSAISO, trustlet_id=4)
    impostor = machine.started(impostor_image, 4, "Impostor.exe")
    assert respond(machine, impostor, blob) == b""
