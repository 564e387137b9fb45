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
from types import MappingProxyType

from vbsim.hw import code
from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SIZE
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
from vbsim.sk.kernel import PoolExhausted, SecureKernel
from vbsim.sk.layouts import IumFilter, IumServiceTable, read_field

__all__ = ["NORMAL_IUM_SYSCALL", "SECURE_NUMBERS", "SECURE_SYSCALLS", "SECURE_SYSCALL_BIT"]


class Kind(Enum):
    DISABLED = "disabled"
    FORWARDED = "forwarded"
    SPECIAL = "special"


#: The model build's IUM syscall classification (by NT service name).  Anything not listed is
#: disabled.
IUM_FILTER: Mapping[str, Kind] = MappingProxyType(
    {
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
)


SecureHandler = Callable[["SecureKernel", Cpu, ium.SecureProcess, list[int]], int]
SpecialHandler = Callable[["SecureKernel", Cpu, ium.SecureProcess, list[int]], int]

_NT_NAMES = MappingProxyType({number: name for name, number in NT_NUMBERS.items()})


def _ium_routine(handler: SecureHandler) -> Callable[[Cpu, list[int]], int]:
    """A table entry's code: the service for the trustlet this VP runs (its SK processor block
    names it), with the caller's argument registers."""

    def routine(vp: Cpu, args: list[int]) -> int:
        sk = vp.kernel()
        if not isinstance(sk, SecureKernel):
            return int(NtStatus.INVALID_SYSTEM_SERVICE)
        caller = ium.current(sk, vp)
        if caller is None:
            return int(NtStatus.INVALID_SYSTEM_SERVICE)
        return handler(sk, vp, caller, args)

    return routine


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
    """Loader: each IUM service becomes a routine in SK code, its VA an entry of the service
    tables in an SK data page (``layouts.IumServiceTable``); dispatch reads the tables from SK
    memory at every call (the filter itself is written with the image, ``filter_bitmaps``)."""
    from vbsim.sk.ium import secure_syscalls

    space = sk.builder()
    va, gpa = space.alloc_data()
    table = bytearray(PAGE_SIZE)
    for index, name in SECURE_SYSCALLS.items():
        handler = secure_syscalls.HANDLERS.get(name)
        if handler is not None and 0 <= index < IumServiceTable.SECURE_ENTRIES:
            routine = f"sk.ium.{name}"
            code.register(routine, _ium_routine(handler))
            at = IumServiceTable.SECURE + index * IumServiceTable.ENTRY
            table[at : at + 8] = space.install(routine).to_bytes(8, "little")
    specials = sorted(
        (NT_NUMBERS[name], name) for name in secure_syscalls.SPECIAL if name in NT_NUMBERS
    )
    for slot, (number, name) in enumerate(specials[: IumServiceTable.SPECIAL_MAX]):
        routine = f"sk.ium.special.{name}"
        code.register(routine, _ium_routine(secure_syscalls.SPECIAL[name]))
        at = IumServiceTable.SPECIAL + slot * IumServiceTable.SPECIAL_RECORD
        table[at : at + 4] = number.to_bytes(4, "little")
        table[at + 8 : at + 16] = space.install(routine).to_bytes(8, "little")
    count = IumServiceTable.SPECIAL_COUNT.offset
    table[count : count + 4] = min(len(specials), IumServiceTable.SPECIAL_MAX).to_bytes(4, "little")
    assert sk.loader is not None
    sk.loader.write(gpa, bytes(table))  # the loader writes the image
    sk.ium_table_va = va


def _secure_routine(sk: SecureKernel, vp: Cpu, index: int) -> int:
    """The secure service table's entry ``index`` as SK memory holds it now (0: none)."""
    if not 0 <= index < IumServiceTable.SECURE_ENTRIES:
        return 0
    return vp.read_u64(sk.ium_table_va + IumServiceTable.SECURE + index * IumServiceTable.ENTRY)


def _special_routine(sk: SecureKernel, vp: Cpu, number: int) -> int:
    """The special table's routine for NT service ``number``, read now (0: none)."""
    base = sk.ium_table_va
    count = min(read_field(vp, base, IumServiceTable.SPECIAL_COUNT), IumServiceTable.SPECIAL_MAX)
    raw = vp.read(base + IumServiceTable.SPECIAL, count * IumServiceTable.SPECIAL_RECORD)
    for at in range(0, len(raw), IumServiceTable.SPECIAL_RECORD):
        if int.from_bytes(raw[at : at + 4], "little") == number:
            return int.from_bytes(raw[at + 8 : at + 16], "little")
    return 0


def dispatch(sk: SecureKernel, vp: Cpu) -> int:
    number = vp.rax
    args = [vp.r10, vp.rdx, vp.r8, vp.r9]
    # Only a trustlet's thread reaches this entry (VTL1 CPL3 runs only inside run_thread,
    # which names the process in the SK processor block); each service that needs its caller
    # looks it up there itself and refuses when the block names no process.
    if number & SECURE_SYSCALL_BIT:
        index = number & ~SECURE_SYSCALL_BIT & 0xFFFF_FFFF
        name = SECURE_SYSCALLS.get(index)
        if name is None or number >> 32:
            status = int(NtStatus.INVALID_SYSTEM_SERVICE)
        else:
            # The service table in SK memory decides (a write to it changes dispatch).
            routine = _secure_routine(sk, vp, index)
            status = int(NtStatus.NOT_IMPLEMENTED) if routine == 0 else _status(vp, routine, args)
        if sk.tracing(vp):
            sk.emit(
                vp,
                "ium-syscall",
                "secure-service-table",
                NtStatus.name_of(status),
                number=number,
                service=name or "?",
                trustlet_id=_caller_id(sk, vp),
            )
        return status
    name = _NT_NAMES.get(number)
    kind = classify(sk, vp, number)
    if kind is Kind.DISABLED:
        status = int(NtStatus.INVALID_SYSTEM_SERVICE)
    elif kind is Kind.SPECIAL:
        routine = _special_routine(sk, vp, number)
        status = int(NtStatus.NOT_IMPLEMENTED) if routine == 0 else _status(vp, routine, args)
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
            trustlet_id=_caller_id(sk, vp),
        )
    return status


def _caller_id(sk: SecureKernel, vp: Cpu) -> int | None:
    """The calling trustlet's ID for the trace (None: the object names no admitted image; a
    service routine that needs the caller looks it up itself and refuses then)."""
    caller = ium.current(sk, vp)
    return caller.trustlet_id(vp) if caller is not None else None


def _status(vp: Cpu, routine: int, args: list[int]) -> int:
    """Call a table entry; what it leaves in RAX is the status (a routine that is not a
    service, e.g. a hijacked entry, answers with whatever it returns)."""
    try:
        result = vp.call(routine, args)
    except PoolExhausted:  # the SK's frame pool ran out: the service fails, the SK goes on
        return int(NtStatus.INSUFFICIENT_RESOURCES)
    return result & 0xFFFF_FFFF if isinstance(result, int) else int(NtStatus.UNSUCCESSFUL)


@guest_code("sk.KiSystemServiceStart")
def _system_service(vp: Cpu) -> None:
    sk = vp.kernel()
    if not isinstance(sk, SecureKernel):
        vp.wrong_context("the IUM system-service entry without the Secure Kernel's GS")
    vp.rax = dispatch(sk, vp)
    vp.sysret()
