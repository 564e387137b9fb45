"""Process-creation notify callbacks, the Threat-Intelligence ETW provider, and the EDR driver
that uses both: security telemetry as data in VTL0 RAM, where a kernel write primitive reaches it.

- ``nt!PspCreateProcessNotifyRoutine``: 64 EX_CALLBACK slots in NT's .data, each an EX_FAST_REF
  to an EX_CALLBACK_ROUTINE_BLOCK in pool (:mod:`vbsim.nt.layouts`).
  ``PsSetCreateProcessNotifyRoutine`` fills a free slot; ``PspCallProcessNotifyRoutines`` walks
  all 64 at every process creation and calls each routine through NT's processor.  Zeroing a
  slot is how EDRSandblast, "Blinding EDR on Windows" (Pierre Ciholas et al.) and every
  BYOVD "EDR killer" (Terminator/Spyboy 2023, AuKill 2023) make the EDR miss process creation.
- ``nt!EtwThreatIntProvRegHandle`` → _ETW_REG_ENTRY → _ETW_GUID_ENTRY, whose
  ProviderEnableInfo.IsEnabled NT reads before logging a Threat-Intelligence event (the model
  logs cross-process NtReadVirtualMemory, EtwTiLogReadWriteVm) into a buffer in RAM.  Clearing
  IsEnabled is EDRSandblast's "ETW TI" blinding (also Lazarus' FudModule rootkit, Avast 2022).
- The EDR (``vbsim_edr.sys``, signed by the model PKI) registers its callback in DriverEntry; the
  callback appends each new PID to a log in the driver's own .data, found RIP-relatively as
  compiled code finds its globals.

Neither structure is registered with KDP (Windows does not protect them: KDP protects only
what a driver registers, MS-KDP blog 2020-07-08), so these attacks work on every preset.  What
kernel CFG checks is where a routine pointer leads, not whether a slot is empty: removing a
callback passes it, redirecting one to code that is no valid call target does not where kCFG
runs (``vbsim.nt.kcfg``; catalogue row D9).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from vbsim.hw import code
from vbsim.image import ImageKind, build_image, parse_image
from vbsim.nt import kcfg
from vbsim.nt.layouts import (
    ETW_BUFFER,
    ETW_GUID_ENTRY,
    ETW_REG_ENTRY,
    EX_CALLBACK_ROUTINE_BLOCK,
    EX_CALLBACK_SIZE,
    MAX_FAST_REFS,
    PSP_MAX_CREATE_PROCESS_NOTIFY,
    THREAT_INT_GUID,
    fast_ref_object,
    read_field,
    write_field,
)
from vbsim.ntstatus import NtStatus

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.nt.kernel import NtKernel

NOTIFY_ARRAY = "PspCreateProcessNotifyRoutine"
ETW_TI_HANDLE = "EtwThreatIntProvRegHandle"
#: [model] Where the Threat-Intelligence logger's buffer is (a real session's buffers hang off
#: the logger context; the model keeps one pointer).
ETW_TI_BUFFER = "EtwpThreatIntBuffer"
MAX_EVENTS = (4096 - ETW_BUFFER.FIRST_EVENT) // ETW_BUFFER.EVENT_SIZE


def install(nt: NtKernel) -> None:
    """Loader time: the globals in NT's .data (zeroed by winload)."""
    nt.variable(NOTIFY_ARRAY, PSP_MAX_CREATE_PROCESS_NOTIFY * EX_CALLBACK_SIZE)
    nt.variable(ETW_TI_HANDLE)
    nt.variable(ETW_TI_BUFFER)


def initialize(nt: NtKernel, cpu: Cpu) -> None:
    """EtwInitialize (phase 1): register the Threat-Intelligence provider, enabled (the EDR's
    PPL-antimalware session enables it on a real system; the model enables it at boot)."""
    guid_entry, _ = nt.alloc_kernel_page(cpu)
    reg_entry = guid_entry + 0x800  # the registration shares the page (pool packing)
    cpu.write(guid_entry + ETW_GUID_ENTRY.Guid.offset, THREAT_INT_GUID)
    write_field(cpu, guid_entry, ETW_GUID_ENTRY.ProviderEnableInfo, 1)
    write_field(cpu, reg_entry, ETW_REG_ENTRY.GuidEntry, guid_entry)
    cpu.write_u64(nt.variable(ETW_TI_HANDLE).va, reg_entry)
    buffer, _ = nt.alloc_kernel_page(cpu)
    cpu.write_u64(nt.variable(ETW_TI_BUFFER).va, buffer)


# -- process notify -----------------------------------------------------------------------------
def ps_set_create_process_notify_routine(
    nt: NtKernel, cpu: Cpu, routine: int, remove: bool = False
) -> int:
    """PsSetCreateProcessNotifyRoutine(NotifyRoutine, Remove)."""
    array = nt.variable(NOTIFY_ARRAY).va
    for index in range(PSP_MAX_CREATE_PROCESS_NOTIFY):
        slot = array + index * EX_CALLBACK_SIZE
        value = cpu.read_u64(slot)
        block = fast_ref_object(value)
        if remove:
            if value and read_field(cpu, block, EX_CALLBACK_ROUTINE_BLOCK.Function) == routine:
                cpu.write_u64(slot, 0)
                return int(NtStatus.SUCCESS)
            continue
        if value:
            continue
        block, _ = nt.alloc_kernel_page(cpu)  # ExAllocateCallBack (a pool block)
        write_field(cpu, block, EX_CALLBACK_ROUTINE_BLOCK.Function, routine)
        cpu.write_u64(slot, block | MAX_FAST_REFS)
        if cpu.tracing:
            cpu.emit("nt", "process-notify", "registered", slot=index, routine=routine)
        return int(NtStatus.SUCCESS)
    # WRK ps/psnotify.c: STATUS_PROCEDURE_NOT_FOUND for an unknown routine, INVALID_PARAMETER
    # when all 64 slots are taken; the model answers INVALID_PARAMETER for both.
    return int(NtStatus.INVALID_PARAMETER)


def call_process_notify(nt: NtKernel, cpu: Cpu, parent: int, pid: int, create: bool) -> int:
    """PspCallProcessNotifyRoutines: every non-empty slot's routine, read from RAM now, called
    through guard_dispatch_icall (kernel CFG checks the pointer first: ``vbsim.nt.kcfg``)."""
    array = nt.variable(NOTIFY_ARRAY).va
    called = 0
    for index in range(PSP_MAX_CREATE_PROCESS_NOTIFY):
        value = cpu.read_u64(array + index * EX_CALLBACK_SIZE)
        if not value:
            continue
        routine = read_field(cpu, fast_ref_object(value), EX_CALLBACK_ROUTINE_BLOCK.Function)
        kcfg.guard_dispatch_icall(nt, cpu, routine, "process-notify", parent, pid, int(create))
        called += 1
    return called


# -- ETW ----------------------------------------------------------------------------------------
def provider_enabled(nt: NtKernel, cpu: Cpu) -> bool:
    """EtwProviderEnabled(EtwThreatIntProvRegHandle, ...): IsEnabled read through the handle."""
    reg_entry = cpu.read_u64(nt.variable(ETW_TI_HANDLE).va)
    if not reg_entry:
        return False
    guid_entry = read_field(cpu, reg_entry, ETW_REG_ENTRY.GuidEntry)
    return bool(guid_entry and read_field(cpu, guid_entry, ETW_GUID_ENTRY.ProviderEnableInfo))


def etw_ti_log(nt: NtKernel, cpu: Cpu, event: int, first: int, second: int) -> bool:
    """EtwTiLog*: write one event if (and only if) the provider is enabled now."""
    if not provider_enabled(nt, cpu):
        if cpu.tracing:
            cpu.emit("nt", "etw-ti", "provider-disabled", event=event)
        return False
    buffer = cpu.read_u64(nt.variable(ETW_TI_BUFFER).va)
    count = read_field(cpu, buffer, ETW_BUFFER.Count)
    if count >= MAX_EVENTS:
        return False
    at = buffer + ETW_BUFFER.FIRST_EVENT + count * ETW_BUFFER.EVENT_SIZE
    cpu.write_u32(at, event)
    cpu.write_u32(at + 4, first)
    cpu.write_u64(at + 8, second)
    write_field(cpu, buffer, ETW_BUFFER.Count, count + 1)
    if cpu.tracing:
        cpu.emit("nt", "etw-ti", "logged", event=event, caller=first, target=second)
    return True


# -- the EDR driver -----------------------------------------------------------------------------
EDR_DRIVER = "vbsim_edr.sys"
_EDR_ENTRY = "drv.edr.DriverEntry"
_EDR_NOTIFY = "drv.edr.ProcessNotify"
#: [model] The EDR's .data: u64 count of creations seen, then one u64 PID each.
EDR_LOG_MAX = 500


@functools.lru_cache(maxsize=1)
def edr_unsigned() -> bytes:
    """The EDR driver as its build produces it (the disk builder signs it: ``vbsim.boot.disk``)."""
    return build_image(
        ImageKind.DRIVER,
        EDR_DRIVER,
        "DriverEntry",
        {"DriverEntry": _EDR_ENTRY, "ProcessNotify": _EDR_NOTIFY},
        data=bytes(4096),
    )


@functools.lru_cache(maxsize=1)
def edr_rvas() -> tuple[int, int]:
    """(ProcessNotify's RVA, .data's RVA): link-time constants of the EDR image."""
    parsed = parse_image(edr_unsigned())
    export = parsed.export("ProcessNotify")
    data = next(s for s in parsed.sections if s.name.startswith(".data"))
    assert export is not None
    return export.rva, data.virtual_address


def _edr_entry(cpu: Cpu, driver_object: int) -> int:
    """DriverEntry: register the process-creation callback (the driver's base is DriverStart)."""
    from vbsim.nt.drivers import DO_START
    from vbsim.nt.kernel import NtKernel

    nt = cpu.kernel()
    if not isinstance(nt, NtKernel):
        return int(NtStatus.UNSUCCESSFUL)
    notify_rva, _ = edr_rvas()
    base = cpu.read_u64(driver_object + DO_START)
    return ps_set_create_process_notify_routine(nt, cpu, base + notify_rva)


def _edr_notify(cpu: Cpu, parent: int, pid: int, create: int) -> None:
    """The callback: append ``pid`` to the log in the driver's .data (RIP-relative)."""
    notify_rva, data_rva = edr_rvas()
    log = cpu.rip - notify_rva + data_rva
    count = cpu.read_u64(log)
    if create and count < EDR_LOG_MAX:
        cpu.write_u64(log + 8 + count * 8, pid)
        cpu.write_u64(log, count + 1)


code.register(_EDR_ENTRY, _edr_entry)
code.register(_EDR_NOTIFY, _edr_notify)
