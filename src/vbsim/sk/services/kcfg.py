"""Kernel CFG in the Secure Kernel: the bitmap NT checks its indirect calls against, made
read-only for VTL0 (vbs-internals §1.1 row 13, §1.3, §5.1; NT's side: ``vbsim.nt.kcfg``).

The SK's part, as the public record has it: "The PHASE3_INIT secure call handler ... applies a
read-only protection to the kernel CFG bitmaps" (Windows Internals 7th ed. part 2 ch. 9, "Secure
Kernel startup"); the pages are "kernel CFG read-only" privileged pages of HVCI's NT address
table (same chapter), and "kCFG is only fully enabled when HVCI is enabled. SLAT is used to
protect the kCFG bitmap" (McGarr, "No Code Execution? No Problem!", 2022); NT hands the bitmap
over with INITIALIZE_KERNEL_CFG (its decompiled VslInitializeSecureKernelCfg passes the bitmap's
VA), and the SK tracks it with a NAR (McGarr, "Investigating Kernel Mode Shadow Stacks", 2025:
NARs exist "for ... the kernel CFG bitmap pages").  Argument layouts are not public; the
model's:

- ``INITIALIZE_KERNEL_CFG`` (Field1 VA of NT's control page, Field2 VA of the bitmap, Field3
  its page count, ``KCFG_BITMAP_PAGES``).  Only while the SK still trusts VTL0 (phase 1, before
  PHASE3_INIT), only once, and only when the SK's configuration says HVCI
  (STATUS_NOT_SUPPORTED otherwise: NT then keeps ``guard_icall_bitmap`` 0).  The SK translates
  each page itself and records its GPA page; each must be VTL0 RAM, supervisor, not executable
  and no other protection's.  The bitmap stays writable: NT fills it until PHASE3_INIT.
- PHASE3_INIT (:func:`phase3`): the recorded pages become VTL0-read-only in SLAT (R; with HVPT
  their translation is pinned too) and owned like KDP's pages (``layouts.Kdp.KCFG``), so HVCI
  never raises their rights again.  A VTL0 write afterwards is a SLAT refusal → secure
  intercept → NT bugcheck, as for KDP-protected data.
- ``ENABLE_CFG_TARGET`` (Field1 a secure image handle, Field2 the target's VA): for a driver
  loaded after PHASE3_INIT.  The target must be a routine of that LOADED image: in the driver
  region (the SK knows a runtime driver's VA range from its NAR, WI7-P2; the model's SK knows
  the region), 32-byte aligned (a routine's start in the model's code format, ``hw.code``), in
  one of the image's validated code pages (the SK's own translation of the VA against the
  image's PFN list in SK memory), holding a routine's thunk.  The SK then sets the target's bit
  through the recorded GPA.  NT's own routines are outside the driver region and in no secure
  image, so no VTL0 request — not even one made after remapping a PTE — can make one valid.

Trace kind ``kcfg``: mechanisms ``kcfg.policy``, ``kcfg.register``, ``kcfg.protect``,
``kcfg.target``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from vbsim.hv.defs import HvMapGpaFlags
from vbsim.hw import code
from vbsim.hw.x86 import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from vbsim.nt.layouts import KCFG_BITMAP_PAGES, KCFG_WINDOWS, kcfg_slot
from vbsim.ntstatus import NtStatus
from vbsim.sk import hvpt, objects
from vbsim.sk import layouts as L
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.kernel import Phase, Reply
from vbsim.sk.layouts import Config, KernelCfg, read_field, write_field
from vbsim.sk.layouts import SecureImage as Img
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.sk.kernel import SecureKernel

R = int(HvMapGpaFlags.READABLE)  # HV_MAP_GPA_READABLE (TLFS; vsm-spec §3.1)


def record_va(sk: SecureKernel) -> int:
    """The VA of kCFG's record page in SK memory (``layouts.KernelCfg``): a symbol of the SK's
    image (``SecureKernel.kcfg_va``); the record itself is in SK memory."""
    return sk.kcfg_va


_record = record_va


def _refuse(sk: SecureKernel, vp: Cpu, mechanism: str, reason: str, status: int, **d: int) -> Reply:
    sk.emit(vp, "kcfg", mechanism, "refused", reason=reason, status=int(status), **d)
    return Reply(status)


def _gpns(vp: Cpu, record: int) -> list[int]:
    count = min(read_field(vp, record, KernelCfg.PAGES), KernelCfg.MAX_PAGES)
    return list(struct.unpack(f"<{count}Q", vp.read(record + KernelCfg.GPNS, 8 * count)))


# -- INITIALIZE_KERNEL_CFG ------------------------------------------------------------------------
def initialize_kernel_cfg(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    control, bitmap, pages = args.fields[0], args.fields[1], args.fields[2]
    record = _record(sk)
    if not sk.config(vp, Config.HVCI):
        sk.emit(vp, "kcfg", "kcfg.policy", "not-enabled", why="hvci-off")
        return Reply(NtStatus.NOT_SUPPORTED)
    if sk.phase(vp) is not Phase.PHASE1:
        return _refuse(sk, vp, "kcfg.register", "phase", NtStatus.INVALID_DEVICE_STATE)
    if read_field(vp, record, KernelCfg.STATE) != KernelCfg.NONE:
        return _refuse(sk, vp, "kcfg.register", "again", NtStatus.INVALID_DEVICE_STATE)
    bad = NtStatus.INVALID_PARAMETER
    if pages != KCFG_BITMAP_PAGES or control & PAGE_MASK or bitmap != control + PAGE_SIZE:
        return _refuse(sk, vp, "kcfg.register", "range", bad, pages=pages)
    kdp = sk.kdp
    cr3 = hvpt.vtl0_cr3(sk, vp)
    gpns: list[int] = []
    for index in range(1 + pages):
        va = control + index * PAGE_SIZE
        m = hvpt.translate(sk, vp, va, cr3)
        if m is None:
            return _refuse(sk, vp, "kcfg.register", "unmapped", bad, va=va)
        gpn = m.gpa >> PAGE_SHIFT
        if not sk.vtl0_page(vp, gpn) or m.user or not m.nx or gpn in gpns:
            return _refuse(sk, vp, "kcfg.register", "page", bad, va=va, pfn=gpn)
        if kdp is not None and kdp.owner(vp, gpn) != L.Kdp.NONE:
            return _refuse(sk, vp, "kcfg.register", "protected-page", bad, pfn=gpn)
        gpns.append(gpn)
    vp.write(record + KernelCfg.GPNS, b"".join(g.to_bytes(8, "little") for g in gpns))
    write_field(vp, record, KernelCfg.PAGES, len(gpns))
    write_field(vp, record, KernelCfg.CONTROL_VA, control)
    write_field(vp, record, KernelCfg.BITMAP_VA, bitmap)
    write_field(vp, record, KernelCfg.STATE, KernelCfg.REGISTERED)
    sk.emit(vp, "kcfg", "kcfg.register", "registered", bitmap=bitmap, pages=len(gpns))
    return Reply()


# -- PHASE3_INIT ----------------------------------------------------------------------------------
def phase3(sk: SecureKernel, vp: Cpu) -> None:
    """PHASE3_INIT's part: the registered pages become read-only to VTL0 (and pinned with
    HVPT), for good."""
    record = _record(sk)
    if read_field(vp, record, KernelCfg.STATE) != KernelCfg.REGISTERED:
        return
    gpns = _gpns(vp, record)
    if not sk.set_vtl0_rights(vp, gpns, R):
        sk.emit(vp, "kcfg", "kcfg.protect", "failed", pages=len(gpns))
        return
    kdp = sk.kdp
    if kdp is not None:
        kdp.set_owner(vp, gpns, L.Kdp.KCFG)
    pinned = False
    if hvpt.root(sk, vp):  # HVPT runs: pin each page's VA to the GPA the SK protected
        control = read_field(vp, record, KernelCfg.CONTROL_VA)
        cr3 = hvpt.vtl0_cr3(sk, vp)
        mapped = []
        for index, gpn in enumerate(gpns):
            va = control + index * PAGE_SIZE
            m = hvpt.translate(sk, vp, va, cr3)
            if m is not None and m.gpa >> PAGE_SHIFT == gpn:
                mapped.append((va, m))
        if len(mapped) == len(gpns):
            pinned = hvpt.pin(sk, vp, mapped, "kcfg", rights=R)
    write_field(vp, record, KernelCfg.STATE, KernelCfg.PROTECTED)
    sk.emit(vp, "kcfg", "kcfg.protect", "read-only", pages=len(gpns), slat="R", hvpt=pinned)


# -- ENABLE_CFG_TARGET ----------------------------------------------------------------------------
def enable_cfg_target(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    handle, target = args.fields[0], args.fields[1]
    record = _record(sk)
    state = read_field(vp, record, KernelCfg.STATE)
    if state == KernelCfg.NONE:
        return Reply(NtStatus.NOT_SUPPORTED)
    bad = NtStatus.INVALID_PARAMETER
    kind, image = objects.lookup(sk, vp, handle)
    if kind != L.ObjectType.SECURE_IMAGE or read_field(vp, image, Img.STAGE) != Img.LOADED:
        return _refuse(sk, vp, "kcfg.target", "handle", NtStatus.INVALID_HANDLE, handle=handle)
    slot = kcfg_slot(target)
    drivers_base, drivers_span = KCFG_WINDOWS[1]
    if target % code.THUNK_SIZE or slot is None or not 0 <= target - drivers_base < drivers_span:
        return _refuse(sk, vp, "kcfg.target", "target", bad, target=target)
    m = hvpt.translate(sk, vp, target)
    count = min(read_field(vp, image, Img.PFN_COUNT), Img.MAX_PAGES)
    raw = vp.read(image + Img.PFNS, 8 * count)
    pfns = [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]
    bits = vp.read(image + Img.CODE, Img.MAX_PAGES // 8)
    gpn = m.gpa >> PAGE_SHIFT if m is not None else -1
    index = pfns.index(gpn) if gpn in pfns else -1
    if index < 0 or not bits[index >> 3] >> (index & 7) & 1:
        return _refuse(sk, vp, "kcfg.target", "not-image-code", bad, target=target)
    thunk = vp.read(sk.space.phys_va((gpn << PAGE_SHIFT) + (target & PAGE_MASK)), code.THUNK_SIZE)
    if not thunk.startswith(code.THUNK_MAGIC):
        return _refuse(sk, vp, "kcfg.target", "not-a-routine", bad, target=target)
    offset, bit = slot
    page = 1 + offset // PAGE_SIZE  # the control page comes first
    if page >= min(read_field(vp, record, KernelCfg.PAGES), KernelCfg.MAX_PAGES):
        return _refuse(sk, vp, "kcfg.target", "record", bad, target=target)
    bitmap_gpn = vp.read_u64(record + KernelCfg.GPNS + 8 * page)
    at = sk.space.phys_va((bitmap_gpn << PAGE_SHIFT) + offset % PAGE_SIZE)
    vp.write_u64(at, vp.read_u64(at) | 1 << bit)
    sk.emit(vp, "kcfg", "kcfg.target", "enabled", target=target, handle=handle)
    return Reply()


def register(sk: SecureKernel) -> None:
    va, _ = sk.builder().alloc_data(1)
    sk.kcfg_va = va
    sk.handlers[Service.INITIALIZE_KERNEL_CFG] = initialize_kernel_cfg
    sk.handlers[Service.ENABLE_CFG_TARGET] = enable_cfg_target
