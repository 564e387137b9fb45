"""System calls from IUM: the Secure Kernel's VTL1 ``LSTAR`` entry (vbs-internals §2.5, §2.6, §4).

``KiSystemServiceStart`` in the SK sends numbers with bit 27 set (0x0800_0000) to the secure
service table (``Ium*``, §4.2) and every other number through the IUM NT-syscall filter, where
each NT service is exactly one of:
- *disabled*: STATUS_INVALID_SYSTEM_SERVICE (no file, registry or device I/O, no process
  creation, no debugging of other processes — §4.1 "Not available");
- *forwarded*: NT implements it; the SK sends it as an ``IumGenericSyscall`` normal call;
- *special*: implemented (or restricted) in the SK itself.
The table is per build (configuration, Appendix A item 7); the model build's table is below, over
the model's NT service numbers.  No hypervisor transition happens for a secure system call: the
trustlet and the SK are both in VTL1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum

from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.ium_abi import (
    NORMAL_IUM_SYSCALL,
    NT_NUMBERS,
    SECURE_NUMBERS,
    SECURE_SYSCALL_BIT,
    SECURE_SYSCALLS,
)
from vbsim.ntstatus import NtStatus
from vbsim.sk.ium import process as ium

# At module level (process.py imports the kernel module too): a function-level import costs an
# import-machinery call on every system call.
from vbsim.sk.kernel import SecureKernel
from vbsim.sk.layouts import IumFilter

__all__ = ["NORMAL_IUM_SYSCALL", "SECURE_NUMBERS", "SECURE_SYSCALLS", "SECURE_SYSCALL_BIT"]


class Kind(Enum):
    DISABLED = "disabled"
    FORWARDED = "forwarded"
    SPECIAL = "special"


#: The model build's IUM syscall classification (by NT service name).  Anything not listed is
#: disabled.
IUM_FILTER: dict[str, Kind] = {
    "NtTestAlert": Kind.FORWARDED,
    "NtQueryInformationProcess": Kind.SPECIAL,
    "NtAllocateVirtualMemory": Kind.SPECIAL,
    "NtTerminateProcess": Kind.SPECIAL,
    "NtReadVirtualMemory": Kind.DISABLED,
    "NtWriteVirtualMemory": Kind.DISABLED,
    "NtSetValueKey": Kind.DISABLED,
    "NtQueryValueKey": Kind.DISABLED,
    "NtLoadDriver": Kind.DISABLED,
    "NtDeviceIoControlFile": Kind.DISABLED,
}


SecureHandler = Callable[["SecureKernel", Cpu, ium.SecureProcess, list[int]], int]
SpecialHandler = Callable[["SecureKernel", Cpu, ium.SecureProcess, list[int]], int]

_NT_NAMES = {number: name for name, number in NT_NUMBERS.items()}


_HANDLERS: list[Mapping[str, SecureHandler]] = []
_SPECIAL: list[Mapping[str, SpecialHandler]] = []


def _secure_handlers() -> Mapping[str, SecureHandler]:
    """The secure service table's code (resolved once: the module imports this one)."""
    if not _HANDLERS:
        from vbsim.sk.ium import secure_syscalls

        _HANDLERS.append(secure_syscalls.HANDLERS)
    return _HANDLERS[0]


def _special_handlers() -> Mapping[str, SpecialHandler]:
    if not _SPECIAL:
        from vbsim.sk.ium import secure_syscalls

        _SPECIAL.append(secure_syscalls.SPECIAL)
    return _SPECIAL[0]


def filter_bitmaps() -> bytes:
    """The filter as the loader writes it into SK memory (``layouts.IumFilter``): the forwarded
    bitmap, then the special bitmap, over NT service numbers."""
    raw = bytearray(IumFilter.SIZE)
    for name, kind in IUM_FILTER.items():
        number = NT_NUMBERS.get(name)
        if number is None or not 0 <= number < IumFilter.NUMBERS or kind is Kind.DISABLED:
            continue
        base = IumFilter.FORWARDED if kind is Kind.FORWARDED else IumFilter.SPECIAL
        raw[base + (number >> 3)] |= 1 << (number & 7)
    return bytes(raw)


def classify(sk: SecureKernel, vp: Cpu, number: int) -> Kind:
    """The filter's verdict for NT service ``number``, read from SK memory now."""
    if not 0 <= number < IumFilter.NUMBERS:
        return Kind.DISABLED
    byte, mask = number >> 3, 1 << (number & 7)
    if vp.read(sk.filter_va + IumFilter.FORWARDED + byte, 1)[0] & mask:
        return Kind.FORWARDED
    if vp.read(sk.filter_va + IumFilter.SPECIAL + byte, 1)[0] & mask:
        return Kind.SPECIAL
    return Kind.DISABLED


def register(sk: SecureKernel) -> None:
    """Nothing to install: the filter is written by the loader, the handlers are SK code."""


def dispatch(sk: SecureKernel, vp: Cpu) -> int:
    number = vp.rax
    args = [vp.r10, vp.rdx, vp.r8, vp.r9]
    caller = ium.current(sk, vp)
    if caller is None:
        return int(NtStatus.INVALID_SYSTEM_SERVICE)  # only IUM callers reach this entry
    if number & SECURE_SYSCALL_BIT:
        name = SECURE_SYSCALLS.get(number & ~SECURE_SYSCALL_BIT & 0xFFFF_FFFF)
        handler: SecureHandler | None = _secure_handlers().get(name) if name else None
        if name is None or number >> 32:
            status = int(NtStatus.INVALID_SYSTEM_SERVICE)
        elif handler is None:
            status = int(NtStatus.NOT_IMPLEMENTED)
        else:
            status = handler(sk, vp, caller, args)
        if sk.tracing(vp):
            sk.emit(
                vp,
                "ium-syscall",
                "secure-service-table",
                NtStatus.name_of(status),
                number=number,
                service=name or "?",
                trustlet_id=caller.trustlet_id(vp),
            )
        return status
    name = _NT_NAMES.get(number)
    kind = classify(sk, vp, number)
    if kind is Kind.DISABLED:
        status = int(NtStatus.INVALID_SYSTEM_SERVICE)
    elif kind is Kind.SPECIAL:
        special: SpecialHandler | None = _special_handlers().get(name) if name else None
        status = int(NtStatus.NOT_IMPLEMENTED) if special is None else special(sk, vp, caller, args)
    else:
        reply = sk.normal_call(vp, NORMAL_IUM_SYSCALL, number, *args)
        status = int(NtStatus.UNSUCCESSFUL) if reply is None else reply[0] & 0xFFFF_FFFF
    if sk.tracing(vp):
        sk.emit(
            vp,
            "ium-syscall",
            "ium.syscall-filter",
            kind.value,
            number=number,
            service=name or "?",
            status=NtStatus.name_of(status),
            trustlet_id=caller.trustlet_id(vp),
        )
    return status


@guest_code("sk.KiSystemServiceStart")
def _system_service(vp: Cpu) -> None:
    sk = vp.kernel()
    if not isinstance(sk, SecureKernel):
        vp.wrong_context("the IUM system-service entry without the Secure Kernel's GS")
    vp.rax = dispatch(sk, vp)
    vp.sysret()
