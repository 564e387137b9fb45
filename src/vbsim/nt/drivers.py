"""NT's driver loader, its code integrity (DSE and ``g_CiOptions``), executable pool, and the
drivers in the model's driver store.

**Loading** (``NtLoadDriver`` → IopLoadDriver → MmLoadSystemImage).  The caller needs
SeLoadDriverPrivilege.  The image comes from the *driver store* (``nt.driver_store``, file
name → signed PE bytes: the disk's files, signed when the disk was built, host side; NT signs
nothing and holds no key).  Then:

- *Without HVCI* NT's own code integrity decides (DSE, ``ci.dll`` in VTL0): the Authenticode
  signature must chain to the root in CI's anchor record and meet the driver requirement stored
  with it (both in ci.dll's CiPolicy section in RAM, read at each check: ``vbsim.image.anchors``)
  — unless the kernel global ``g_CiOptions`` (guest RAM, 6 = enforcing) is 0: then the check is
  skipped.  Zeroing it with a kernel write primitive is the classic DSE-disable data attack
  (vbs-internals §6 A3/A6: a K0 attacker, typically through a vulnerable signed driver).  A K0
  write to the anchor where nothing protects CiPolicy (no KDP) makes CI trust the attacker's
  root instead.
- *With HVCI* validation belongs to SKCI in VTL1 (vbs-internals §3.6: "SKCI does the cryptographic
  hash and signature check for all HVCI-validated images"), so ``g_CiOptions`` gates nothing that
  matters: NT copies the file into pages and issues ``CREATE_SECURE_IMAGE`` with their PFN list,
  maps the image, hands the SK the PFNs of the mapped pages (``FINISH_SECURE_IMAGE_VALIDATION``),
  then ``LOAD_DRIVER`` — only after that are the code pages kernel-executable in SLAT
  (vbs-internals §5.1 steps; ``vbsim.sk.services.hvci``).

NT maps an image at ``DRIVER_BASE`` and up (the half of CODE_BASE's PML4 slot above the boot
image, so every process sees it): code pages supervisor read-only executable, everything else
RW/NX.  Then it calls ``DriverEntry(DriverObject)`` through its VP, at CPL0 — a real instruction
fetch, which SLAT refuses for code the SK never validated (secure intercept → #GP → bugcheck).

**The store** holds four drivers built with :mod:`vbsim.image` (and signed by the disk builder,
``vbsim.boot.disk``): a sample driver signed by the model PKI's ``codesign`` profile, an unsigned
one, one signed under the "other" root (untrusted),
and a *vulnerable signed driver* whose IoControl gives any caller 8-byte reads and writes at any
kernel address, performed at CPL0 through the VP (the K0 primitive of A3/A6, in the style of the
publicly documented RTCore64 read/write IOCTLs; the codes are the model's).

**Executable pool** (``nt_allocate_executable``, ExAllocatePool(NonPagedPoolExecute)): without
HVCI NT maps RWX kernel memory itself and nothing else is asked; with HVCI it must ask the SK
(``MAKE_PROTECTED_PAGE_EXECUTABLE``), which refuses W+KX (and KX for unsigned contents).

Every decision is a trace event of kind ``driver`` (mechanisms ``dse``, ``skci``,
``mm.map-image``, ``driver-entry``, ``ioctl``, ``pool-execute``, ``privilege``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from vbsim.guest import rtc
from vbsim.guest.address_space import CODE_BASE, DIRECT_MAP
from vbsim.hv.defs import HvMapGpaFlags
from vbsim.hw import code
from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.hw.pagetable import PageTables
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, PTE_ADDR_MASK, Pte
from vbsim.image import ImageFormatError, ImageKind, ParsedImage, anchors, build_image, parse_image
from vbsim.layout import Loads
from vbsim.nt import kcfg, objdir, syscalls
from vbsim.nt.layouts import (
    BOOT_IMAGE_SPAN,
    DRIVER_OBJECT,
    IMAGE_SECTION,
    IO_STACK_LOCATION,
    IRP,
    IRP_MJ_DEVICE_CONTROL,
    KLDR_DATA_TABLE_ENTRY,
    LIST_ENTRY,
    SE_CI_CALLBACKS,
    HostKernelView,
    HostMemory,
    HostReader,
    read_field,
    write_field,
)
from vbsim.nt.pfn import NoPages
from vbsim.ntstatus import NtStatus, ok
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.nt.kernel import NtKernel

#: Where NT maps driver images: above the loader's boot-image range, same PML4 slot.
DRIVER_BASE = CODE_BASE + BOOT_IMAGE_SPAN
#: NonPagedPoolExecute allocations (model layout), also in that slot.
POOL_EXECUTE_BASE = DRIVER_BASE + (128 << 30)
MAX_POOL_PAGES = 64
#: Largest driver image NT maps (pages; the SK's capture limit is the same, MAX_IMAGE_PAGES).
MAX_DRIVER_PAGES = 256
#: IMAGE_SCN_MEM_WRITE (PE/COFF spec, section flags).
_SCN_MEM_WRITE = 0x8000_0000
_NX = int(Pte.NX)
#: HV_MAP_GPA rights NT asks the SK for on an executable pool page (TLFS HV_MAP_GPA_FLAGS).
_RX = HvMapGpaFlags.READABLE | HvMapGpaFlags.KERNEL_EXECUTABLE | HvMapGpaFlags.USER_EXECUTABLE
_RWX = _RX | HvMapGpaFlags.WRITABLE

CI_OPTIONS = "g_CiOptions"
#: ci.dll's section holding g_CiOptions and CI's trust anchor (KDP-protected where KDP runs).
CI_POLICY_SECTION = "ci.dll!CiPolicy"
#: [model] CiPolicy's pages: g_CiOptions at offset 0; the anchor record (the root certificate
#: CI pins and the driver signing requirement, ``vbsim.image.anchors``) at CI_TRUST_OFFSET.
CI_POLICY_PAGES = 2
#: [model] Whether HVCI was configured when CI initialised (1) or not (0), at this offset in
#: CiPolicy: NT and CI latch the boot's configuration (Windows applies a change of the
#: DeviceGuard HVCI value at the next boot, MS Learn "Enable memory integrity"), and KDP then
#: protects it with g_CiOptions, so an administrator's run-time hive write changes nothing.
CI_HVCI_OFFSET = 8
CI_TRUST_OFFSET = PAGE_SIZE
SE_CI_CALLBACKS_NAME = "SeCiCallbacks"
MODULE_LIST = "PsLoadedModuleList"
CI_VALIDATE_IMAGE_HEADER = "ci.CiValidateImageHeader"
#: ntoskrnl's ZwFlushInstructionCache export: on x86-64 the instruction cache is coherent, so it
#: does nothing and returns STATUS_SUCCESS.  A routine like it is what the public SeCiCallbacks
#: swap points CiValidateImageHeader at (Fortinet, "The Swan Song for Driver Signature
#: Enforcement Tampering", 2022: the callback-table method that still works where KDP protects
#: g_CiOptions).
ZW_FLUSH_INSTRUCTION_CACHE = "nt.ZwFlushInstructionCache"
#: The default value of ``ci!g_CiOptions`` (DSE enforcing); DSE-disable tools write 0.
CI_OPTIONS_ENFORCING = 6


#: ntstatus.h STATUS_IMAGE_ALREADY_LOADED.
STATUS_IMAGE_ALREADY_LOADED = 0xC000_010E
#: ntstatus.h STATUS_INVALID_DEVICE_REQUEST.
STATUS_INVALID_DEVICE_REQUEST = 0xC000_0010

SAMPLE_DRIVER = "vbsim_sample.sys"
UNSIGNED_DRIVER = "vbsim_unsigned.sys"
OTHER_ROOT_DRIVER = "vbsim_otherroot.sys"
VULNERABLE_DRIVER = "vbsim_vuln.sys"

#: The vulnerable driver's IOCTLs (model values): a 16-byte METHOD_BUFFERED buffer
#: ``{u64 address; u64 value}``; READ8 fills ``value`` from ``address``, WRITE8 stores it there.
IOCTL_READ8 = 0x8000_2048
IOCTL_WRITE8 = 0x8000_204C
IOCTL_BUFFER = 16

#: DRIVER_OBJECT offsets (``nt.layouts.DRIVER_OBJECT``, Vergilius 19041), and the model's one
#: extra field past its end: the value the sample DriverEntry stores to show it ran.
DO_START = DRIVER_OBJECT.DriverStart.offset
DO_SIZE = DRIVER_OBJECT.DriverSize.offset
DO_INIT = DRIVER_OBJECT.DriverInit.offset
DO_IOCONTROL = DRIVER_OBJECT.major(IRP_MJ_DEVICE_CONTROL)
DO_ENTRY_MARK = DRIVER_OBJECT.SIZE
ENTRY_MARK = int.from_bytes(b"DRVENTRY", "little")

#: A debugger's hit counters on the drivers' routine bodies (host-side observation only: no
#: guest code reads them).  Tests use them to show a body never ran.
RUNS: Counter[str] = Counter()


@dataclass(frozen=True)
class DriverSpec:
    name: str
    tag: str
    signer: str  # "model" (codesign profile), "other" (other_pki codesign) or "none"
    vulnerable: bool = False

    def routine(self, export: str) -> str:
        return f"drv.{self.tag}.{export}"


DRIVERS: tuple[DriverSpec, ...] = (
    DriverSpec(SAMPLE_DRIVER, "sample", "model"),
    DriverSpec(UNSIGNED_DRIVER, "unsigned", "none"),
    DriverSpec(OTHER_ROOT_DRIVER, "otherroot", "other"),
    DriverSpec(VULNERABLE_DRIVER, "vuln", "model", vulnerable=True),
)


@dataclass(frozen=True)
class LoadedDriver:
    """A driver NT loaded, as RAM describes it at the moment it is read (:func:`driver_at` in
    NT, :func:`host_driver` for tools); nothing here is kept between decisions.

    The DRIVER_OBJECT (``object_va``) names the driver's KLDR_DATA_TABLE_ENTRY
    (DriverSection): its DllBase, SizeOfImage and EntryPoint, and through SectionPointer the
    image's section record with the Secure Kernel's handle for the image.  The frames are what
    NT's kernel PTEs map over ``[DllBase, DllBase + SizeOfImage)``, as MmUnloadSystemImage
    finds them; a code frame is one whose PTE is executable (NX clear)."""

    name: str
    object_va: int
    section: int
    base: int
    entry: int
    io_control: int
    secure_handle: int
    #: The image's span in pages (SizeOfImage, rounded up).
    pages: int
    pfns: tuple[int, ...]
    code_pfns: tuple[int, ...]

    @property
    def code_pages(self) -> frozenset[int]:
        """The indices (in ``pfns``) of the code pages."""
        code = set(self.code_pfns)
        return frozenset(index for index, pfn in enumerate(self.pfns) if pfn in code)

    @property
    def data_pfns(self) -> tuple[int, ...]:
        code = set(self.code_pfns)
        return tuple(pfn for pfn in self.pfns if pfn not in code)


def _describe(
    memory: Loads, pte_of: Callable[[int], int | None], object_va: int
) -> LoadedDriver | None:
    """The driver whose DRIVER_OBJECT is at ``object_va``, read through ``memory`` now (None:
    no loader entry, or one whose size is not a driver's)."""
    entry = read_field(memory, object_va, DRIVER_OBJECT.DriverSection)
    if not entry:
        return None
    base = read_field(memory, entry, KLDR_DATA_TABLE_ENTRY.DllBase)
    pages = -(-read_field(memory, entry, KLDR_DATA_TABLE_ENTRY.SizeOfImage) // PAGE_SIZE)
    if not 0 < pages <= MAX_DRIVER_PAGES:
        return None
    length = min(read_field(memory, entry, KLDR_DATA_TABLE_ENTRY.BaseDllNameLength), 512)
    buffer = read_field(memory, entry, KLDR_DATA_TABLE_ENTRY.BaseDllNameBuffer)
    name = memory.read(buffer, length & ~1).decode("utf-16-le", "replace")
    record = read_field(memory, entry, KLDR_DATA_TABLE_ENTRY.SectionPointer)
    handle = read_field(memory, record, IMAGE_SECTION.SecureImageHandle) if record else 0
    pfns: list[int] = []
    code_pfns: list[int] = []
    for index in range(pages):
        leaf = pte_of(base + index * PAGE_SIZE)
        if leaf is None:
            continue  # a page already unmapped: nothing to free there
        pfn = (leaf & PTE_ADDR_MASK) >> PAGE_SHIFT
        pfns.append(pfn)
        if not leaf & _NX:
            code_pfns.append(pfn)
    return LoadedDriver(
        name,
        object_va,
        entry,
        base,
        read_field(memory, entry, KLDR_DATA_TABLE_ENTRY.EntryPoint),
        memory.read_u64(object_va + DO_IOCONTROL),
        handle,
        pages,
        tuple(pfns),
        tuple(code_pfns),
    )


#: [model] NT's cursors for driver images and executable pool (``NtKernel.take_system_va``).
IMAGE_CURSOR = "MiNextSystemImageVa"
POOL_CURSOR = "MiNextExecutePoolVa"


# -- the drivers' code ----------------------------------------------------------------------------
def _entry_routine(routine: str) -> Callable[..., int]:
    def driver_entry(vp: Cpu, driver_object: int) -> int:
        RUNS[routine] += 1
        vp.write_u64(driver_object + DO_ENTRY_MARK, ENTRY_MARK)
        return int(NtStatus.SUCCESS)

    return driver_entry


# -- IRP_MJ_DEVICE_CONTROL, the driver's side of a METHOD_BUFFERED request ------------------------
def irp_request(vp: Cpu, irp: int) -> tuple[int, int, int]:
    """IoGetCurrentIrpStackLocation and the request it describes, read from the IRP now:
    (IoControlCode, SystemBuffer VA, InputBufferLength)."""
    stack = read_field(vp, irp, IRP.CurrentStackLocation)
    return (
        read_field(vp, stack, IO_STACK_LOCATION.IoControlCode),
        read_field(vp, irp, IRP.SystemBuffer),
        read_field(vp, stack, IO_STACK_LOCATION.InputBufferLength),
    )


def complete_request(vp: Cpu, irp: int, status: int, information: int) -> int:
    """What a dispatch routine does before IoCompleteRequest: IoStatus.Status and .Information
    (the bytes of SystemBuffer to copy back) into the IRP; the status is its return value."""
    write_field(vp, irp, IRP.Status, status & 0xFFFF_FFFF)
    write_field(vp, irp, IRP.Information, information)
    return status


def _echo_routine(routine: str) -> Callable[..., int]:
    def io_control(vp: Cpu, device: int, irp: int) -> int:
        """The sample driver answers every request with its input, left in SystemBuffer."""
        RUNS[routine] += 1
        _, _, length = irp_request(vp, irp)
        return complete_request(vp, irp, int(NtStatus.SUCCESS), length)

    return io_control


def _vulnerable_routine(routine: str) -> Callable[..., int]:
    def io_control(vp: Cpu, device: int, irp: int) -> int:
        """The bug: no check of ``address`` at all.  The access runs at CPL0 in VTL0."""
        RUNS[routine] += 1
        ioctl, buffer, length = irp_request(vp, irp)
        if ioctl not in (IOCTL_READ8, IOCTL_WRITE8):
            return complete_request(vp, irp, STATUS_INVALID_DEVICE_REQUEST, 0)
        if length < IOCTL_BUFFER:
            return complete_request(vp, irp, int(NtStatus.BUFFER_TOO_SMALL), 0)
        address = vp.read_u64(buffer)
        if ioctl == IOCTL_READ8:
            vp.write_u64(buffer + 8, vp.read_u64(address))
        else:
            vp.write_u64(address, vp.read_u64(buffer + 8))
        return complete_request(vp, irp, int(NtStatus.SUCCESS), IOCTL_BUFFER)

    return io_control


for _spec in DRIVERS:
    code.register(_spec.routine("DriverEntry"), _entry_routine(_spec.routine("DriverEntry")))
    _make = _vulnerable_routine if _spec.vulnerable else _echo_routine
    code.register(_spec.routine("IoControl"), _make(_spec.routine("IoControl")))


def store_image(spec: DriverSpec) -> bytes:
    """The unsigned image of a store driver, as its build produces it (pure).  Signing it is
    the disk builder's (host side, ``vbsim.boot.disk.driver_store``): NT signs nothing."""
    routines = {name: spec.routine(name) for name in ("DriverEntry", "IoControl")}
    return build_image(ImageKind.DRIVER, spec.name, "DriverEntry", routines)


# -- wiring ---------------------------------------------------------------------------------------
def register_nt(nt: NtKernel) -> None:
    """Loader time (called from ``NtKernel.__post_init__``): ``nt!SeCiCallbacks`` in NT's
    .data, the driver store, the loader's VA cursors, and the two system services."""
    nt.variable(SE_CI_CALLBACKS_NAME, SE_CI_CALLBACKS.SIZE)
    objdir.register(nt)
    head = module_list_head(nt)  # an empty LIST_ENTRY points at itself
    nt.loader_write_u64(head, head)
    nt.loader_write_u64(head + 8, head)
    nt.ci_validate_image_header = nt.install_routine(CI_VALIDATE_IMAGE_HEADER)
    nt.install_routine(ZW_FLUSH_INSTRUCTION_CACHE)
    nt.system_va_cursor(IMAGE_CURSOR, DRIVER_BASE)
    nt.system_va_cursor(POOL_CURSOR, POOL_EXECUTE_BASE)
    syscalls.register(nt, "NtLoadDriver", nt_load_driver)
    syscalls.register(nt, "NtDeviceIoControlFile", nt_device_io_control_file)


def initialize_ci(nt: NtKernel, vp: Cpu) -> int:
    """CiInitialize (NT phase 1): ci.dll's ``CiPolicy`` section holds ``g_CiOptions`` (DSE
    enforcing); CI fills ``nt!SeCiCallbacks``; then it asks KDP to make CiPolicy read-only
    (MmProtectDriverSection), which holds wherever KDP runs (on 20H1+ "whenever VBS runs":
    helz.dev, "ci.dll unsigned driver loading", 2025; Fortinet 2022) and fails with
    STATUS_INVALID_DEVICE_STATE without VBS.  SeCiCallbacks stays in ntoskrnl's ordinary .data:
    nothing protects it (Fortinet 2022).  Returns MmProtectDriverSection's status."""
    from vbsim.nt import kdp, registry

    section = kdp.load_data_section(nt, vp, CI_POLICY_SECTION, CI_POLICY_PAGES, ci_policy_image())
    nt.ci_options_va = section.va
    # The boot's HVCI configuration (the hive at phase 1, with a Secure Kernel to enforce it).
    hvci = nt.vsl is not None and bool(registry.query(nt, vp, registry.HVCI_KEY))
    vp.write_u64(section.va + CI_HVCI_OFFSET, int(hvci))
    callbacks = nt.variable(SE_CI_CALLBACKS_NAME).va
    vp.write_u64(
        callbacks + SE_CI_CALLBACKS.CiValidateImageHeader.offset, nt.ci_validate_image_header
    )
    return kdp.mm_protect_driver_section(nt, vp, section.va)


def ci_policy_image() -> bytes:
    """ci.dll's CiPolicy section as the image ships it: ``g_CiOptions`` enforcing, then the
    root CI pins — the model root's certificate, public, as Microsoft's roots are compiled into
    ci.dll — with the driver requirement (``vbsim.image.anchors``).  An image constant: CI
    decides from the copy in RAM, never from this."""
    from vbsim.image import model_pki

    options = CI_OPTIONS_ENFORCING.to_bytes(8, "little").ljust(CI_TRUST_OFFSET, b"\0")
    return options + anchors.model_record(model_pki().root_der, (ImageKind.DRIVER,))


def load_boot_drivers(nt: NtKernel, vp: Cpu) -> None:
    """The boot-start drivers: the EDR (it must see every process NT creates after it)."""
    from vbsim.nt.notify import EDR_DRIVER

    status = load_driver(nt, vp, EDR_DRIVER)
    _event(vp, "boot-driver", NtStatus.name_of(status), driver=EDR_DRIVER)


def _store(nt: NtKernel) -> dict[str, bytes]:
    return nt.driver_store


def hvci_enabled(nt: NtKernel, vp: Cpu) -> bool:
    """HVCI was configured at boot and VBS runs: CI's latched flag in CiPolicy, read from RAM
    now (CI_HVCI_OFFSET; 0 before CiInitialize).  Not the hive: a value changed at run time
    takes effect at the next boot (a fifth audit saw NT skip SKCI after such a write)."""
    if nt.vsl is None or not nt.ci_options_va:
        return False
    return bool(vp.read_u64(nt.ci_options_va + CI_HVCI_OFFSET) & 1)


def _event(vp: Cpu, mechanism: str, outcome: str, **detail: Any) -> None:
    if vp.tracing:
        vp.emit("driver", mechanism, outcome, **detail)


def _kernel_tables(nt: NtKernel, vp: Cpu) -> PageTables:
    """NT's kernel page tables as the running kernel edits them: through its VP."""
    return PageTables(nt.phys(vp), nt.space.root)


def _string(nt: NtKernel, vp: Cpu, ptr: int, length: int) -> str | None:
    if not 0 < length <= 256:
        return None
    raw = nt.copy_from_user(vp, ptr, length)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


# -- code integrity in VTL0 (DSE) -----------------------------------------------------------------
def ci_options_va(nt: NtKernel) -> int:
    """``ci!g_CiOptions`` (in the CiPolicy section CiInitialize mapped)."""
    return nt.ci_options_va


def ci_trust_va(nt: NtKernel) -> int:
    """CI's anchor record (``vbsim.image.anchors``) in the CiPolicy section."""
    return nt.ci_options_va + CI_TRUST_OFFSET


def se_ci_callbacks_va(nt: NtKernel) -> int:
    """``nt!SeCiCallbacks``."""
    return nt.variable(SE_CI_CALLBACKS_NAME).va


def code_integrity_check(nt: NtKernel, vp: Cpu, name: str) -> int:
    """SeValidateImageHeader, as NT does it without HVCI: calls ci.dll through
    ``SeCiCallbacks.CiValidateImageHeader`` (a pointer read from RAM now) with the image
    file's name in a pool buffer (address and length: [model] Windows passes the section's
    file object, from which CI reads the file).  No memory for the name: the load fails."""
    pages = nt.alloc_kernel_pages(vp, 1)
    if pages is None:
        return int(NtStatus.INSUFFICIENT_RESOURCES)
    raw = name.encode("utf-8")[:PAGE_SIZE]
    buffer = pages[0][0]
    vp.write(buffer, raw)
    routine = vp.read_u64(se_ci_callbacks_va(nt) + SE_CI_CALLBACKS.CiValidateImageHeader.offset)
    try:
        result = kcfg.guard_dispatch_icall(nt, vp, routine, "SeCiCallbacks", buffer, len(raw))
    finally:
        vp.write(buffer, bytes(len(raw)))
        nt.free_kernel_page(vp, buffer)
    return result & 0xFFFF_FFFF if isinstance(result, int) else int(NtStatus.INVALID_IMAGE_HASH)


@guest_code(ZW_FLUSH_INSTRUCTION_CACHE)
def zw_flush_instruction_cache(vp: Cpu, *args: object) -> int:
    """ZwFlushInstructionCache: nothing to flush on x86-64 (coherent I-cache); STATUS_SUCCESS."""
    return int(NtStatus.SUCCESS)


@guest_code(CI_VALIDATE_IMAGE_HEADER)
def ci_validate_image_header(vp: Cpu, name_va: int, name_length: int) -> int:
    """ci!CiValidateImageHeader: reads ``g_CiOptions`` from RAM; enforcing means the image
    file's Authenticode signature must chain to the root CI's anchor record in RAM names, with
    the driver requirement that record holds (both read now, through this processor).  The
    file is the one the name in memory designates, read from the system disk."""
    from vbsim.nt.kernel import BOOT_TIME, NtKernel

    nt = vp.kernel()
    if not isinstance(nt, NtKernel):
        vp.wrong_context("ci.dll without NT")
    name = None
    if 0 < name_length <= PAGE_SIZE:  # a kernel buffer: read as it is (no user probe)
        try:
            name = vp.read(name_va, name_length).decode("utf-8")
        except UnicodeDecodeError:
            name = None
    image = _store(nt).get(name) if name is not None else None
    if name is None or image is None:
        return int(NtStatus.OBJECT_NAME_NOT_FOUND)
    options = vp.read_u64(ci_options_va(nt))
    if not options & CI_OPTIONS_ENFORCING:
        _event(vp, "dse", "skipped", driver=name, g_CiOptions=options)
        return int(NtStatus.SUCCESS)
    anchor = anchors.read(vp, ci_trust_va(nt), ImageKind.DRIVER)
    # Certificates are judged at the system time NT keeps in RAM (KeBootTime, read now).
    now = rtc.filetime_to_datetime(vp.read_u64(nt.variables[BOOT_TIME].va))
    result = anchors.verify(image, anchor, at=now)
    if not result.ok:
        _event(
            vp,
            "dse",
            "refused",
            driver=name,
            failure=str(result.failure),
            detail=result.detail,
            status=NtStatus.name_of(NtStatus.INVALID_IMAGE_HASH),
        )
        return int(NtStatus.INVALID_IMAGE_HASH)
    _event(vp, "dse", "verified", driver=name, g_CiOptions=options)
    return int(NtStatus.SUCCESS)


# -- mapping --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageLayout:
    """An image as the loader lays it out in memory: one bytes object per page, and which
    page indices hold code."""

    pages: tuple[bytes, ...]
    code: frozenset[int]


def image_layout(data: bytes, parsed: ParsedImage) -> ImageLayout | None:
    """MiMapSystemImage's layout (NT's own loader; the SK validates the same layout with its own
    code, as two separate binaries do): headers at RVA 0, each section's raw data at its RVA
    (``min(raw, virtual)`` bytes, the rest zero).  None when the image is not HVCI-compatible:
    a section not page-aligned, a writable executable section, a page holding both code and
    data, or too large."""
    header_pages = max(1, -(-parsed.size_of_headers // PAGE_SIZE))
    end = header_pages * PAGE_SIZE
    for section in parsed.sections:
        span = section.virtual_size or section.raw_size
        end = max(end, section.virtual_address + span)
    count = -(-end // PAGE_SIZE)
    if not 0 < count <= MAX_DRIVER_PAGES:
        return None
    memory = bytearray(count * PAGE_SIZE)
    headers = data[: parsed.size_of_headers]
    memory[: len(headers)] = headers
    code_pages: set[int] = set()
    data_pages: set[int] = set(range(header_pages))
    for section in parsed.sections:
        span = section.virtual_size or section.raw_size
        if section.virtual_address % PAGE_SIZE or section.virtual_address < PAGE_SIZE:
            return None
        if section.executable and section.characteristics & _SCN_MEM_WRITE:
            return None
        length = min(section.raw_size, span)
        raw = data[section.raw_offset : section.raw_offset + length]
        memory[section.virtual_address : section.virtual_address + len(raw)] = raw
        if span:
            first = section.virtual_address // PAGE_SIZE
            last = (section.virtual_address + span - 1) // PAGE_SIZE
            (code_pages if section.executable else data_pages).update(range(first, last + 1))
    if code_pages & data_pages or not code_pages:
        return None
    pages = tuple(bytes(memory[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]) for i in range(count))
    return ImageLayout(pages, frozenset(code_pages))


def map_image(
    nt: NtKernel, vp: Cpu, name: str, parsed: ParsedImage, layout: ImageLayout
) -> LoadedDriver:
    """MiMapSystemImage: fresh frames, contents written through the direct map, PTEs for code
    (read-only, executable) and data (RW/NX), the loader entry (KLDR_DATA_TABLE_ENTRY, with its
    section record) and a DRIVER_OBJECT.  No validation of any kind: the kernel-internal step,
    which a compromised kernel (or a manual-mapping attacker) can call.  The entry goes on
    PsLoadedModuleList only once the load succeeds (:func:`link_module`)."""
    # a guard gap of 16 pages between images
    base = nt.take_system_va(vp, IMAGE_CURSOR, (len(layout.pages) + 16) * PAGE_SIZE)
    tables = _kernel_tables(nt, vp)
    for index, content in enumerate(layout.pages):
        pfn = nt.alloc_page(vp)
        vp.write(DIRECT_MAP + (pfn << PAGE_SHIFT), content)
        executable = index in layout.code
        flags = int(Pte.G) if executable else int(Pte.RW | Pte.NX | Pte.G)
        tables.map(base + index * PAGE_SIZE, pfn << PAGE_SHIFT, flags)
    size = len(layout.pages) * PAGE_SIZE
    entry = loader_entry(nt, vp, name, base, base + parsed.entry_rva, size)
    write_field(
        vp, entry, KLDR_DATA_TABLE_ENTRY.SectionPointer, entry + KLDR_DATA_TABLE_ENTRY.SECTION_AT
    )
    object_va, _ = nt.alloc_kernel_page(vp)
    write_field(vp, object_va, DRIVER_OBJECT.DriverStart, base)
    write_field(vp, object_va, DRIVER_OBJECT.DriverSize, size)
    write_field(vp, object_va, DRIVER_OBJECT.DriverSection, entry)
    write_field(vp, object_va, DRIVER_OBJECT.DriverInit, base + parsed.entry_rva)
    # What the driver's DriverEntry assigns (DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL]
    # = its dispatch routine); the model's loader writes the image's IoControl export there.
    export = parsed.export("IoControl")
    vp.write_u64(object_va + DO_IOCONTROL, 0 if export is None else base + export.rva)
    _event(
        vp,
        "mm.map-image",
        "mapped",
        driver=name,
        base=base,
        pages=len(layout.pages),
        code=len(layout.code),
    )
    driver = driver_at(nt, vp, object_va)
    assert driver is not None  # just written
    return driver


def unmap_image(nt: NtKernel, vp: Cpu, driver: LoadedDriver) -> None:
    """MiUnloadSystemImage's frames: every page the kernel PTEs map over the image (as read
    from RAM when the driver was described), then the loader entry and the DRIVER_OBJECT."""
    tables = _kernel_tables(nt, vp)
    for index in range(driver.pages):
        va = driver.base + index * PAGE_SIZE
        if tables.lookup(va) is not None:
            tables.unmap(va)
            vp.invlpg(va)
    for pfn in driver.pfns:
        nt.free_page(vp, pfn)
    nt.free_kernel_page(vp, driver.section)
    nt.free_kernel_page(vp, driver.object_va)
    _event(vp, "mm.map-image", "unmapped", driver=driver.name, base=driver.base)


def _pfn_list_page(nt: NtKernel, vp: Cpu, pfns: list[int]) -> int:
    """A kernel page holding ``pfns`` as u64s (an MDL's PFN array); returns its PFN."""
    va, gpa = nt.alloc_kernel_page(vp)
    vp.write(va, b"".join(pfn.to_bytes(8, "little") for pfn in pfns[: PAGE_SIZE // 8]))
    return gpa >> PAGE_SHIFT


def _create_secure_image(nt: NtKernel, vp: Cpu, image: bytes) -> tuple[int, int]:
    """VslpCreateSecureImage: the file's bytes in kernel pages, described by a PFN list."""
    assert nt.vsl is not None
    file_pfns: list[int] = []
    for offset in range(0, len(image), PAGE_SIZE):
        va, gpa = nt.alloc_kernel_page(vp)
        vp.write(va, image[offset : offset + PAGE_SIZE])
        file_pfns.append(gpa >> PAGE_SHIFT)
    list_pfn = _pfn_list_page(nt, vp, file_pfns)
    status, outputs = nt.vsl.call(
        vp, Service.CREATE_SECURE_IMAGE, len(image), list_pfn, len(file_pfns)
    )
    for frame in [*file_pfns, list_pfn]:
        nt.free_page(vp, frame)
    return status, outputs[0] if outputs else 0


def _validate_mapped(nt: NtKernel, vp: Cpu, driver: LoadedDriver, handle: int) -> int:
    """FINISH_SECURE_IMAGE_VALIDATION with the mapped pages, then LOAD_DRIVER."""
    assert nt.vsl is not None
    list_pfn = _pfn_list_page(nt, vp, list(driver.pfns))
    status, _ = nt.vsl.call(
        vp, Service.FINISH_SECURE_IMAGE_VALIDATION, handle, list_pfn, len(driver.pfns)
    )
    nt.free_page(vp, list_pfn)
    if ok(status):
        status, _ = nt.vsl.call(vp, Service.LOAD_DRIVER, handle)
    if not ok(status):
        nt.vsl.call(vp, Service.UNLOAD_DRIVER, handle)  # drop the secure image (if still there)
    return status


# -- the loader -----------------------------------------------------------------------------------
def module_list_head(nt: NtKernel) -> int:
    return nt.variable(MODULE_LIST, LIST_ENTRY.SIZE).va


def modules(nt: NtKernel, vp: Cpu) -> Iterator[int]:
    """The KLDR_DATA_TABLE_ENTRYs of PsLoadedModuleList, walked in RAM in load order (a cycle
    in a corrupted list ends the walk after 1,024 entries)."""
    head = module_list_head(nt)
    link = vp.read_u64(head)
    for _ in range(1024):
        if link == head or not link:
            return
        yield link
        link = vp.read_u64(link)  # InLoadOrderLinks.Flink


def find_module(nt: NtKernel, vp: Cpu, name: str) -> int:
    """MiLookupDataTableEntry by name: walk PsLoadedModuleList in RAM (0: not loaded)."""
    wanted = name.lower().encode("utf-16-le")
    for entry in modules(nt, vp):
        length = read_field(vp, entry, KLDR_DATA_TABLE_ENTRY.BaseDllNameLength)
        buffer = read_field(vp, entry, KLDR_DATA_TABLE_ENTRY.BaseDllNameBuffer)
        if length == len(wanted) and vp.read(buffer, length).lower() == wanted:
            return entry
    return 0


def loader_entry(nt: NtKernel, vp: Cpu, name: str, base: int, entry_point: int, size: int) -> int:
    """A KLDR_DATA_TABLE_ENTRY for the image ``name`` mapped at ``base`` (``size`` bytes), in a
    pool page of its own (the name and the section record follow it); not yet on any list."""
    entry, _ = nt.alloc_kernel_page(vp)
    raw = name.encode("utf-16-le")[:512]
    vp.write(entry + KLDR_DATA_TABLE_ENTRY.NAME_AT, raw)
    write_field(vp, entry, KLDR_DATA_TABLE_ENTRY.DllBase, base)
    write_field(vp, entry, KLDR_DATA_TABLE_ENTRY.EntryPoint, entry_point)
    write_field(vp, entry, KLDR_DATA_TABLE_ENTRY.SizeOfImage, size)
    write_field(vp, entry, KLDR_DATA_TABLE_ENTRY.BaseDllNameLength, len(raw))
    write_field(
        vp, entry, KLDR_DATA_TABLE_ENTRY.BaseDllNameBuffer, entry + KLDR_DATA_TABLE_ENTRY.NAME_AT
    )
    return entry


def link_module(nt: NtKernel, vp: Cpu, entry: int) -> None:
    """MiProcessLoaderEntry(insert): ``entry`` at the tail of PsLoadedModuleList."""
    from vbsim.nt.process import insert_tail

    head = module_list_head(nt)
    if not vp.read_u64(head):  # first use: an empty list head points at itself
        vp.write_u64(head, head)
        vp.write_u64(head + 8, head)
    insert_tail(vp, head, entry)


def insert_module(nt: NtKernel, vp: Cpu, name: str, base: int, entry_point: int, size: int) -> int:
    """A loader entry for ``name`` (:func:`loader_entry`), linked on PsLoadedModuleList;
    returns the entry's VA."""
    entry = loader_entry(nt, vp, name, base, entry_point, size)
    link_module(nt, vp, entry)
    return entry


def host_modules(ram: HostMemory, nt: NtKernel) -> list[str]:
    """PsLoadedModuleList as RAM holds it (``lm`` in a debugger): the BaseDllName of every
    entry, in load order.  Host side (the boot report, goal checks): an entry a rootkit
    unlinked is not listed, as it is not in a debugger's list.  The head is in NT's .data
    (read at its GPA); the entries are pool blocks in the direct map."""
    head = nt.variable(MODULE_LIST, LIST_ENTRY.SIZE)
    reader = HostReader(ram, DIRECT_MAP)
    names: list[str] = []
    link = int.from_bytes(ram.read(head.gpa, 8), "little")
    while link and link != head.va and len(names) < 1024:
        length = min(reader.field(link, KLDR_DATA_TABLE_ENTRY.BaseDllNameLength), 512)
        buffer = reader.field(link, KLDR_DATA_TABLE_ENTRY.BaseDllNameBuffer)
        names.append(reader.read(buffer, length).decode("utf-16-le", "replace"))
        link = reader.field(link, LIST_ENTRY.Flink)  # InLoadOrderLinks.Flink
    return names


def _remove_module(nt: NtKernel, vp: Cpu, entry: int) -> None:
    """MiProcessLoaderEntry(remove), if ``entry`` is still on PsLoadedModuleList (a rootkit
    may have unlinked it already)."""
    from vbsim.nt.process import remove_entry

    if entry in modules(nt, vp):
        remove_entry(vp, entry)


def load_driver(nt: NtKernel, vp: Cpu, name: str) -> int:
    """IopLoadDriver / MmLoadSystemImage for a driver of the store; returns an NTSTATUS."""
    if find_module(nt, vp, name):  # already on PsLoadedModuleList (in RAM)
        return STATUS_IMAGE_ALREADY_LOADED
    image = _store(nt).get(name)
    if image is None:
        _event(vp, "driver-store", "not-found", driver=name)
        return int(NtStatus.OBJECT_NAME_NOT_FOUND)
    hvci = hvci_enabled(nt, vp)
    if hvci:
        _event(vp, "dse", "delegated", driver=name, to="skci")
    else:
        status = code_integrity_check(nt, vp, name)
        if not ok(status):
            return status
    try:
        parsed = parse_image(image)
    except ImageFormatError:
        return int(NtStatus.INVALID_IMAGE_FORMAT)
    layout = image_layout(image, parsed)
    if layout is None:
        _event(vp, "mm.map-image", "refused", driver=name, reason="layout")
        return int(NtStatus.INVALID_IMAGE_FORMAT)
    try:
        handle = 0
        if hvci:
            status, handle = _create_secure_image(nt, vp, image)
            if not ok(status):
                _event(vp, "skci", "refused", driver=name, status=NtStatus.name_of(status))
                return status
        driver = map_image(nt, vp, name, parsed, layout)
        if hvci:
            status = _validate_mapped(nt, vp, driver, handle)
            if not ok(status):
                _event(vp, "skci", "refused", driver=name, status=NtStatus.name_of(status))
                unmap_image(nt, vp, driver)
                return status
            record = read_field(vp, driver.section, KLDR_DATA_TABLE_ENTRY.SectionPointer)
            write_field(vp, record, IMAGE_SECTION.SecureImageHandle, handle)
            driver = replace(driver, secure_handle=handle)
    except NoPages:
        return int(NtStatus.NO_MEMORY)
    # MiProcessKernelCfgImage: the image's exports become valid call targets (vbsim.nt.kcfg).
    targets = kcfg.image_targets(driver.base, parsed)
    status = kcfg.enable_targets(nt, vp, targets, driver.secure_handle, name)
    if not ok(status):
        if driver.secure_handle and nt.vsl is not None:
            nt.vsl.call(vp, Service.UNLOAD_DRIVER, driver.secure_handle)
        unmap_image(nt, vp, driver)
        return status
    try:
        objdir.insert(nt, vp, name, driver.object_va)
    except NoPages:  # no pool page for the directory entry: undo the load
        if driver.secure_handle and nt.vsl is not None:
            status, _ = nt.vsl.call(vp, Service.UNLOAD_DRIVER, driver.secure_handle)
            if not ok(status):
                return int(NtStatus.NO_MEMORY)  # the SK keeps the pages: leak them
        unmap_image(nt, vp, driver)
        return int(NtStatus.NO_MEMORY)
    link_module(nt, vp, driver.section)
    return start_driver(nt, vp, driver)


def driver_at(nt: NtKernel, vp: Cpu, driver_object: int) -> LoadedDriver | None:
    """The driver whose DRIVER_OBJECT is at ``driver_object``, read through NT's processor now
    (None: no object, or no loader entry behind it)."""
    if not driver_object:
        return None
    tables = _kernel_tables(nt, vp)
    return _describe(vp, tables.lookup, driver_object)


def host_driver(ram: HostMemory, nt: NtKernel, name: str) -> LoadedDriver | None:
    """Host side (tests, goal checks, the report): the driver ``\\Driver\\<name>`` as RAM
    describes it, read like a debugger through NT's kernel page tables."""
    view = HostKernelView(ram, nt.space.root)
    return _describe(view, view.pte, objdir.lookup(nt, view, name)) if name else None


def start_driver(nt: NtKernel, vp: Cpu, driver: LoadedDriver) -> int:
    """Call ``DriverEntry(DriverObject)`` at CPL0: an instruction fetch like any other."""
    # IopLoadDriver calls DriverObject->DriverInit (read from the object now).
    entry = read_field(vp, driver.object_va, DRIVER_OBJECT.DriverInit)
    result = kcfg.guard_dispatch_icall(nt, vp, entry, "DriverInit", driver.object_va)
    status = result if isinstance(result, int) else int(NtStatus.UNSUCCESSFUL)
    _event(vp, "driver-entry", NtStatus.name_of(status), driver=driver.name, entry=driver.entry)
    if not ok(status):
        unload_driver(nt, vp, driver.name)
    return status


def unload_driver(nt: NtKernel, vp: Cpu, name: str) -> int:
    """IopUnloadDriver: the DRIVER_OBJECT named ``\\Driver\\<name>`` (looked up in RAM) leaves
    the namespace and PsLoadedModuleList, the SK drops its image (the handle in the image's
    section record), NT frees the frames its PTEs map (MmUnloadSystemImage)."""
    driver = driver_at(nt, vp, objdir.lookup(nt, vp, name))
    if driver is None:
        return int(NtStatus.OBJECT_NAME_NOT_FOUND)
    objdir.remove(nt, vp, name)
    _remove_module(nt, vp, driver.section)
    if driver.secure_handle and nt.vsl is not None:
        status, _ = nt.vsl.call(vp, Service.UNLOAD_DRIVER, driver.secure_handle)
        if not ok(status):
            # The SK still protects the pages: NT must not reuse them.  Leak them instead.
            _event(vp, "driver-unload", "pages-leaked", driver=name)
            return status
    unmap_image(nt, vp, driver)
    return int(NtStatus.SUCCESS)


# -- system services ------------------------------------------------------------------------------
def nt_load_driver(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    """NtLoadDriver(PCSTR name, ULONG length) — the model's reduced form of the registry path."""
    from vbsim.nt.layouts import Privilege

    if not syscalls.caller_holds(nt, vp, Privilege.SE_LOAD_DRIVER):
        _event(vp, "privilege", "refused", privilege="SeLoadDriverPrivilege")
        return int(NtStatus.PRIVILEGE_NOT_HELD)
    name = _string(nt, vp, args[0], args[1])
    if name is None:
        return int(NtStatus.INVALID_PARAMETER)
    return load_driver(nt, vp, name)


def nt_device_io_control_file(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    """NtDeviceIoControlFile(PCSTR device, ULONG length, ULONG code, PVOID buffer[16]) — reduced;
    METHOD_BUFFERED: NT copies the buffer in, calls the driver at CPL0, copies it back.  Device
    objects carry no ACL in the model (RTCore64-style devices were open to their callers)."""
    name = _string(nt, vp, args[0], args[1])
    # The driver's object from the \Driver directory in RAM (an unlinked driver is not found)
    driver_object = objdir.lookup(nt, vp, name) if name is not None else 0
    if not driver_object:
        return int(NtStatus.OBJECT_NAME_NOT_FOUND)
    # IopSynchronousServiceTail → IofCallDriver: DriverObject->MajorFunction[IRP_MJ_DEVICE_
    # CONTROL], read from the driver object at each request (an IRP hook redirects it).
    dispatch = vp.read_u64(driver_object + DO_IOCONTROL)
    if not dispatch:
        return STATUS_INVALID_DEVICE_REQUEST
    ioctl = args[2] & 0xFFFF_FFFF
    buffer = nt.copy_from_user(vp, args[3], IOCTL_BUFFER)
    if buffer is None:
        return int(NtStatus.ACCESS_VIOLATION)
    pages = nt.alloc_kernel_pages(vp, 1)
    if pages is None:
        return int(NtStatus.INSUFFICIENT_RESOURCES)
    irp = pages[0][0]
    system_buffer = _build_irp(vp, irp, ioctl, buffer)
    _event(vp, "ioctl", "dispatched", driver=name, code=ioctl)
    try:
        result = kcfg.guard_dispatch_icall(nt, vp, dispatch, "MajorFunction", driver_object, irp)
        status = result & 0xFFFF_FFFF if isinstance(result, int) else int(NtStatus.UNSUCCESSFUL)
        # IopCompleteRequest: IoStatus.Information bytes of SystemBuffer back to the caller.
        count = min(read_field(vp, irp, IRP.Information), IOCTL_BUFFER)
        out = vp.read(system_buffer, count) if count else b""
    finally:
        vp.write(irp, bytes(PAGE_SIZE))
        nt.free_kernel_page(vp, irp)
    if out and not nt.copy_to_user(vp, args[3], out):
        return int(NtStatus.ACCESS_VIOLATION)
    return status


def _build_irp(vp: Cpu, irp: int, ioctl: int, data: bytes) -> int:
    """IopAllocateIrp and IopBuildDeviceIoControlRequest, METHOD_BUFFERED, in one zeroed pool
    page ([model] Windows allocates the IRP with its stack locations from a lookaside list and
    SystemBuffer from pool): the IRP, its one stack location, then SystemBuffer holding the
    caller's input.  SystemBuffer's VA."""
    stack = irp + IRP.SIZE
    system_buffer = stack + IO_STACK_LOCATION.SIZE
    vp.write(system_buffer, data)
    write_field(vp, irp, IRP.SystemBuffer, system_buffer)
    write_field(vp, irp, IRP.CurrentStackLocation, stack)
    write_field(vp, stack, IO_STACK_LOCATION.MajorFunction, IRP_MJ_DEVICE_CONTROL)
    write_field(vp, stack, IO_STACK_LOCATION.InputBufferLength, len(data))
    write_field(vp, stack, IO_STACK_LOCATION.OutputBufferLength, IOCTL_BUFFER)
    write_field(vp, stack, IO_STACK_LOCATION.IoControlCode, ioctl)
    return system_buffer


# -- executable pool ------------------------------------------------------------------------------
def nt_allocate_executable(nt: NtKernel, vp: Cpu, size: int, writable: bool) -> tuple[int, int]:
    """ExAllocatePool(NonPagedPoolExecute): (NTSTATUS, VA).  Without HVCI NT maps the pages
    executable (and writable if asked: RWX) on its own authority.  With HVCI it must ask the SK
    to make each page kernel-executable, and the SK refuses W+KX (``hvci.w^x``)."""
    pages = max(1, -(-size // PAGE_SIZE))
    if pages > MAX_POOL_PAGES:
        return int(NtStatus.INVALID_PARAMETER), 0
    base = nt.take_system_va(vp, POOL_CURSOR, (pages + 1) * PAGE_SIZE)  # a guard page after
    tables = _kernel_tables(nt, vp)
    flags = int(Pte.G) | (int(Pte.RW) if writable else 0)  # no NX: executable
    pfns: list[int] = []
    try:
        for index in range(pages):
            pfn = nt.alloc_page(vp)
            tables.map(base + index * PAGE_SIZE, pfn << PAGE_SHIFT, flags)
            pfns.append(pfn)
    except NoPages:
        return int(NtStatus.NO_MEMORY), 0
    if hvci_enabled(nt, vp):
        assert nt.vsl is not None
        requested = int(_RWX if writable else _RX)
        for pfn in pfns:
            status, _ = nt.vsl.call(vp, Service.MAKE_PROTECTED_PAGE_EXECUTABLE, pfn, requested)
            if not ok(status):
                _event(
                    vp,
                    "pool-execute",
                    "refused",
                    writable=writable,
                    status=NtStatus.name_of(status),
                    by="securekernel",
                )
                for index, frame in enumerate(pfns):
                    tables.unmap(base + index * PAGE_SIZE)
                    vp.invlpg(base + index * PAGE_SIZE)
                    nt.free_page(vp, frame)
                return status, 0
    _event(
        vp,
        "pool-execute",
        "allocated",
        writable=writable,
        va=base,
        pages=pages,
        hvci=hvci_enabled(nt, vp),
    )
    return int(NtStatus.SUCCESS), base
