"""Kernel Control Flow Guard (kCFG): NT's bitmap of valid indirect-call targets and the check at
its indirect calls.

**The check** (``guard_dispatch_icall``).  Every indirect call NT makes through a pointer it
reads from writable memory — a process-notify routine (``vbsim.nt.notify``), a driver's
DriverInit and MajorFunction entries, ``SeCiCallbacks`` (``vbsim.nt.drivers``) — goes through
:func:`guard_dispatch_icall`, which does what ntoskrnl's guard_check_icall does (public
decompilations of it; the bitmap format is in :mod:`vbsim.nt.layouts`): a target that is not a
kernel address (sign bit clear) fails; ``guard_icall_bitmap`` 0 passes every kernel address;
otherwise the u64 holding the target's bits is read from the bitmap and tested.  A failure is
``KeBugCheckEx(KERNEL_SECURITY_CHECK_FAILURE, FAST_FAIL_GUARD_ICALL_CHECK_FAILURE, ...)``
(MS Learn, Bug Check 0x139, parameter 1 = 10), trace mechanism ``kcfg``.  Cost: one read of
``guard_icall_bitmap``, and one of the bitmap when it is set.

**When it is on** (``initialize``, MiInitializeKernelCfg, NT phase 0 before PHASE3_INIT):

- without a hypervisor nothing is set up and only the kernel-address check runs ("If the
  hypervisor is not enabled, and SLAT support is not present, then none of this will be
  initialized, and Kernel CFG will be kept disabled", Windows Internals 7th ed. part 1 ch. 7
  "Kernel CFG"; McGarr, "CVE-2021-21551 - Dell 'dbutil_2_3.sys' Kernel Exploit Writeup",
  2021: with VBS off guard_dispatch_icall only tests the target "isn't a user-mode address",
  and "The Current State of Exploit Development, Part 1", 2020: else
  KERNEL_SECURITY_CHECK_FAILURE);
- with VBS, NT registers the bitmap with the Secure Kernel (INITIALIZE_KERNEL_CFG; the
  decompiled MiInitializeKernelCfg calls VslInitializeSecureKernelCfg and sets
  guard_icall_bitmap only if it succeeds), marks its own image's GuardCFFunctionTable
  (MiMarkKernelImageCfgBits), then sets ``guard_icall_bitmap``.  The SK accepts only when HVCI
  is on ("kCFG is only *fully* enabled when HVCI is enabled. SLAT is used to protect the kCFG
  bitmap", McGarr, "No Code Execution? No Problem!", 2022; Windows Internals 7th ed. part 2
  ch. 9: "kernel CFG read-only" pages are privileged pages of HVCI, and "When HVCI is off, all
  the private pages are nonprivileged").  Refused, ``guard_icall_bitmap`` stays 0: VBS without
  HVCI gets the kernel-address check only.  At PHASE3_INIT the SK makes the bitmap read-only in
  VTL0's SLAT (Windows Internals part 2 ch. 9: PHASE3_INIT "applies a read-only protection to
  the kernel CFG bitmaps"; ``vbsim.sk.services.kcfg``), so a K0 write to it is a SLAT refusal.

**Valid targets.**  [model] NT's GuardCFFunctionTable (``layouts.GUARD_CF_FUNCTION_TABLE``, in
NT's data, written by the loader) lists every routine in NT's code pages except those NT only
calls directly (:data:`DIRECT_ONLY`): their address is never taken, so the compiler never lists
them (MS Learn "PE metadata": the table holds "address taken function symbols").  A driver's
targets are its exports' code RVAs (WI7-P1: "the usual function entries in the guard table each
time a driver image is loaded"; the model's drivers export every routine they have).  Once the
bitmap is read-only NT cannot set them itself: it asks the SK, one ENABLE_CFG_TARGET per target
(the service's number is public, its arguments are not: the model's).  Executable pool gets no
bits (WI7-P1: kernel CFG has no "ability to dynamically request additional bits for JIT").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from vbsim.guest.address_space import CODE_BASE
from vbsim.hw.code import guest_code
from vbsim.hw.x86 import PAGE_SIZE
from vbsim.nt.layouts import (
    FAST_FAIL_GUARD_ICALL_CHECK_FAILURE,
    GUARD_CF_FUNCTION_TABLE,
    KCFG_BITMAP_PAGES,
    KCFG_CONTROL,
    kcfg_slot,
    kcfg_valid,
)
from vbsim.ntstatus import BugCheck, NtStatus, ok
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.image import ParsedImage
    from vbsim.nt.kernel import NtKernel

#: The control page's symbol (``guard_icall_bitmap`` is its first field), the bitmap's and the
#: image's GuardCFFunctionTable's (NT's ``variables``: addresses only).
GUARD_ICALL_BITMAP = "guard_icall_bitmap"
BITMAP = "KiKernelCfgBitmap"  # [model] name: the region guard_icall_bitmap points to
FUNCTION_TABLE = "GuardCFFunctionTable"

#: [model] An internal routine of ntoskrnl that NT calls only directly, never through a pointer:
#: its address is not taken, so it is in no GuardCFFunctionTable — signed, HVCI-validated code
#: that is not a valid call target (the kind of "gadget" kCFG exists to keep indirect calls
#: away from).  It flushes the processor's non-global TLB entries (reloads CR3), harmless; it
#: carries a breakpoint, so the platform records every execution (``Trace.ran``): NT never
#: executes it through an address, so any recorded run is a hijacked indirect call.
GADGET = "nt.KiFlushCurrentTbWorker"
#: NT's routines that are not address-taken (kept out of its GuardCFFunctionTable).
DIRECT_ONLY = frozenset({GADGET})


@guest_code(GADGET, breakpoint=True)
def _flush_current_tb(cpu: Cpu) -> None:
    cpu.mov_to_cr(3, cpu.read_cr(3))


# -- loader time ----------------------------------------------------------------------------------
def install(nt: NtKernel) -> None:
    """Loader time, after every other routine of NT's image is placed: the direct-only routine,
    the image's GuardCFFunctionTable, and (with VBS) the control page and the bitmap right after
    it (zeroed; NT fills the bitmap at phase 0).  Without VBS the control page alone: nothing
    reads a bitmap there (WI7-P1)."""
    nt.install_routine(GADGET)
    rvas = sorted(
        va - CODE_BASE for name, va in nt.space.routines.items() if name not in DIRECT_ONLY
    )
    table_bytes = GUARD_CF_FUNCTION_TABLE.ENTRIES + GUARD_CF_FUNCTION_TABLE.ENTRY * len(rvas)
    pages = -(-table_bytes // PAGE_SIZE)
    table_va, table_gpa = nt.alloc_data_pages(pages)
    raw = len(rvas).to_bytes(4, "little") + b"".join(r.to_bytes(4, "little") for r in rvas)
    raw += bytes(-len(raw) % 8)
    for offset in range(0, len(raw), 8):
        nt.loader_write_u64(table_va + offset, int.from_bytes(raw[offset : offset + 8], "little"))
    _symbol(nt, FUNCTION_TABLE, table_va, table_gpa)
    count = 1 + (KCFG_BITMAP_PAGES if nt.vbs else 0)
    control_va, control_gpa = nt.alloc_data_pages(count, contiguous=True)
    _symbol(nt, GUARD_ICALL_BITMAP, control_va, control_gpa)
    if nt.vbs:  # one physically contiguous run: host tools find the bitmap from one GPA
        _symbol(nt, BITMAP, control_va + PAGE_SIZE, control_gpa + PAGE_SIZE)


def _symbol(nt: NtKernel, name: str, va: int, gpa: int) -> None:
    from vbsim.nt.kernel import KernelVariable

    nt.variables[name] = KernelVariable(name, va, gpa)


# -- phase 0: MiInitializeKernelCfg ---------------------------------------------------------------
def initialize(nt: NtKernel, cpu: Cpu) -> int:
    """Register the bitmap with the Secure Kernel, mark NT's own targets, set
    ``guard_icall_bitmap``; returns the SK's answer (STATUS_NOT_SUPPORTED without VBS)."""
    if nt.vsl is None or BITMAP not in nt.variables:
        _event(cpu, "kcfg.init", "not-enabled", reason="no-hypervisor")
        return int(NtStatus.NOT_SUPPORTED)
    control = nt.variables[GUARD_ICALL_BITMAP].va
    bitmap = nt.variables[BITMAP].va
    status, _ = nt.vsl.call(cpu, Service.INITIALIZE_KERNEL_CFG, control, bitmap, KCFG_BITMAP_PAGES)
    if not ok(status):
        _event(cpu, "kcfg.init", "not-enabled", status=NtStatus.name_of(status))
        return status
    table = nt.variables[FUNCTION_TABLE].va
    count = cpu.read_u32(table + GUARD_CF_FUNCTION_TABLE.Count.offset)
    raw = cpu.read(table + GUARD_CF_FUNCTION_TABLE.ENTRIES, count * GUARD_CF_FUNCTION_TABLE.ENTRY)
    for offset in range(0, len(raw), GUARD_CF_FUNCTION_TABLE.ENTRY):
        set_target(cpu, bitmap, CODE_BASE + int.from_bytes(raw[offset : offset + 4], "little"))
    cpu.write_u64(control + KCFG_CONTROL.GuardIcallBitmap.offset, bitmap)
    _event(cpu, "kcfg.init", "enabled", bitmap=bitmap, targets=count)
    return status


def set_target(cpu: Cpu, bitmap: int, target: int) -> bool:
    """Mark ``target`` (16-byte aligned) valid in the bitmap at ``bitmap``: a store through
    ``cpu`` (before PHASE3_INIT, or wherever nothing protects the bitmap)."""
    slot = kcfg_slot(target)
    if slot is None:
        return False
    at = bitmap + slot[0]
    cpu.write_u64(at, cpu.read_u64(at) | 1 << slot[1])
    return True


def bitmap_of(nt: NtKernel, cpu: Cpu) -> int:
    """``guard_icall_bitmap`` as RAM holds it now (0: kCFG checks kernel addresses only)."""
    return cpu.read_u64(nt.variables[GUARD_ICALL_BITMAP].va)


# -- the check ------------------------------------------------------------------------------------
def guard_check_icall(nt: NtKernel, cpu: Cpu, target: int, site: str) -> None:
    """Return if ``target`` may be called indirectly now; bugcheck 0x139 if not."""
    if not target >> 63:
        _fail(cpu, target, site, "user-address")
    bitmap = cpu.read_u64(nt.variables[GUARD_ICALL_BITMAP].va)
    if not bitmap:
        return
    slot = kcfg_slot(target)
    if slot is None:
        _fail(cpu, target, site, "not-covered")
    if not kcfg_valid(cpu.read_u64(bitmap + slot[0]), target):
        _fail(cpu, target, site, "not-a-valid-target")


def guard_dispatch_icall(nt: NtKernel, cpu: Cpu, target: int, site: str, *args: Any) -> Any:
    """``call [target]`` behind guard_dispatch_icall: the check, then the call."""
    guard_check_icall(nt, cpu, target, site)
    return cpu.call(target, *args)


def _fail(cpu: Cpu, target: int, site: str, reason: str) -> NoReturn:
    """guard_icall_bugcheck → KiRaiseSecurityCheckFailure: KERNEL_SECURITY_CHECK_FAILURE with the
    fast-fail code; [model] no trap frame or exception record (parameters 2 and 3 are 0)."""
    from vbsim.nt.kernel import bugcheck

    if cpu.tracing:
        cpu.emit("kcfg", "kcfg", "refused", target=target, site=site, reason=reason)
    bugcheck(
        cpu, BugCheck.KERNEL_SECURITY_CHECK_FAILURE, FAST_FAIL_GUARD_ICALL_CHECK_FAILURE, 0, 0, 0
    )


# -- drivers loaded later -------------------------------------------------------------------------
def image_targets(base: int, parsed: ParsedImage) -> list[int]:
    """A driver's valid targets: the VAs of its exports that lie in executable sections (its
    entry point is one of them), in order."""
    code = [
        (s.virtual_address, s.virtual_address + (s.virtual_size or s.raw_size))
        for s in parsed.sections
        if s.executable
    ]
    rvas = {e.rva for e in parsed.exports if any(lo <= e.rva < hi for lo, hi in code)}
    return [base + rva for rva in sorted(rvas)]


def enable_targets(
    nt: NtKernel, cpu: Cpu, targets: Iterable[int], secure_handle: int, image: str
) -> int:
    """MiProcessKernelCfgImage for a driver NT maps after boot: nothing to do while
    ``guard_icall_bitmap`` is 0; with a bitmap the SK protects, one ENABLE_CFG_TARGET per target
    (the SK sets the bit after checking it is a routine of that loaded secure image); without
    one (no secure image) NT sets the bits itself, a store the SLAT refuses where the SK
    protects the bitmap.  Returns the first failure's status, or STATUS_SUCCESS."""
    bitmap = bitmap_of(nt, cpu)
    if not bitmap:
        return int(NtStatus.SUCCESS)
    for target in targets:
        if secure_handle and nt.vsl is not None:
            status, _ = nt.vsl.call(cpu, Service.ENABLE_CFG_TARGET, secure_handle, target)
        else:
            status = int(
                NtStatus.SUCCESS if set_target(cpu, bitmap, target) else NtStatus.NO_MEMORY
            )
        if not ok(status):
            _event(
                cpu,
                "kcfg.target",
                "refused",
                image=image,
                target=target,
                status=NtStatus.name_of(status),
            )
            return status
    return int(NtStatus.SUCCESS)


def _event(cpu: Cpu, mechanism: str, outcome: str, **detail: Any) -> None:
    if cpu.tracing:
        cpu.emit("kcfg", mechanism, outcome, **detail)
