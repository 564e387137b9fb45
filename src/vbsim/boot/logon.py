"""The interactive logon: what the machine's user types at winlogon (host side).

The password is an input, like keystrokes on the keyboard: it lives outside the machine until the
logon path carries it in.  At boot the host, standing in for the user at winlogon and for
winlogon's ``LsaLogonUser`` call, writes the logon as bytes into the buffer NT's logon path hands
lsass (:data:`vbsim.nt.lsass.LOGON_BUFFER`, in NT's .data); lsass, guest code, learns the user,
domain and password only by reading those bytes through its processor
(:func:`vbsim.nt.lsass.deliver_logon`), derives its secrets and wipes the clear text.

Guest code — NT, the Secure Kernel, IUM, and the steps of attack scenarios — never imports this
module (``vbsim.boot`` is host side: ``tests/architecture``); an attacker learns the password or
its hash only from bytes that reach it through the architectural interface.  Host-side goal checks
and scenario setup use it to know what the secret *is*, as a tester knows the password they typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vbsim.hw.x86 import PAGE_SIZE
from vbsim.nt.lsass import LOGON_BUFFER, LOGON_BUFFER_SIZE, MAX_LOGON_STRING

if TYPE_CHECKING:
    from vbsim.hw.ram import GuestRam
    from vbsim.nt.kernel import NtKernel


@dataclass(frozen=True)
class Logon:
    """An interactive logon (what winlogon passes to ``LsaLogonUser``)."""

    user: str
    domain: str
    password: str
    logon_id: int = 0x3E7_0001


#: The model's one interactive logon at boot.  Its derived secrets exist only in lsass's memory
#: or, with Credential Guard, only in LsaIso's.
DEFAULT_LOGON = Logon(user="alice", domain="CONTOSO", password="Winter2024!")


def encode_logon(logon: Logon) -> bytes:
    """The logon message as lsass reads it (:mod:`vbsim.nt.lsass`, ``LOGON_BUFFER``'s layout):
    u64 LogonId, then three counted UTF-16LE strings (u16 byte length, then the bytes): user,
    domain, password."""
    out = bytearray(logon.logon_id.to_bytes(8, "little"))
    for text in (logon.user, logon.domain, logon.password):
        raw = text.encode("utf-16-le")[:MAX_LOGON_STRING]
        out += len(raw).to_bytes(2, "little") + raw
    if len(out) > LOGON_BUFFER_SIZE:  # cannot happen with MAX_LOGON_STRING: a layout check
        raise ValueError(f"logon message of {len(out)} bytes exceeds {LOGON_BUFFER_SIZE}")
    return bytes(out)


def type_logon(ram: GuestRam, nt: NtKernel, logon: Logon = DEFAULT_LOGON) -> None:
    """The user logs on at winlogon: the host writes the logon message into NT's logon buffer
    (a debugger's write of guest RAM, through NT's page tables as RAM holds them), where the
    logon path finds it for lsass (``vbsim.nt.lsass.deliver_logon``)."""
    from vbsim.hw.pagetable import PageTables, PhysAccess

    data = encode_logon(logon).ljust(LOGON_BUFFER_SIZE, b"\x00")
    tables = PageTables(PhysAccess.direct(ram, "winlogon"), nt.space.root)
    va = nt.variable(LOGON_BUFFER, LOGON_BUFFER_SIZE).va
    done = 0
    while done < len(data):  # the buffer may straddle two of NT's data pages
        at = va + done
        leaf = tables.lookup(at)
        if leaf is None:
            raise LookupError(f"NT's logon buffer at {at:#x} is not mapped")
        chunk = min(len(data) - done, PAGE_SIZE - (at & (PAGE_SIZE - 1)))
        gpa = (leaf & 0x000F_FFFF_FFFF_F000) | (at & (PAGE_SIZE - 1))
        ram.write(gpa, data[done : done + chunk])
        done += chunk
