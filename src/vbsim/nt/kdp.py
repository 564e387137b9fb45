"""NT's side of Kernel Data Protection and of secure allocations (vbs-internals §5.2, §2.3).

- ``MmProtectDriverSection(AddressWithinSection, Size, Flags)`` — static KDP of the whole
  section containing the address.  As Microsoft Learn documents it: ``Size`` "is currently
  reserved for future usage and should be set to 0" and a non-zero size is
  STATUS_INVALID_PARAMETER; STATUS_INVALID_DEVICE_STATE means only that "Virtual Secure Mode
  (VSM) is currently disabled" (KDP needs VBS, not HVCI); an address in no loaded driver image is
  a MEMORY_MANAGEMENT bugcheck (type 0x1100).  Otherwise NT issues PROTECT_KERNEL_DATA_PAGE
  (build B) or REGISTER_PROTECTED_PAGE (build A: no PROTECT_KERNEL_DATA_PAGE number exists
  there) and returns the SK's answer.
- The secure pool — dynamic KDP: ``ExCreatePool(POOL_CREATE_FLG_SECURE_POOL)`` gives NT physically
  contiguous pages it reaches through its direct map and hands to the SK
  (INITIALIZE_SECURE_POOL); ``ExAllocatePool3`` with secure-pool parameters and
  ``ExSecurePoolUpdate`` go through COPY_PROTECTED_PAGE (see :mod:`vbsim.sk.services.kdp`).
  ``ExSecurePoolUpdate`` bugchecks with BAD_POOL_CALLER when the SK refuses; the ``*_raw``
  variants return the status, which is what a K0 attacker calling the SK directly gets.
- ``VslCreateSecureAllocation`` / ``VslFillSecureAllocation`` (CREATE_/FILL_SECURE_ALLOCATION):
  NT describes the VTL0 source with a real MDL in one of its pages.
- The normal call the SK makes before copying from VTL0 ("get physical pages", vbs-internals
  §2.5); the model's pages are always resident, so NT just answers success.

Driver data sections (what ``MmProtectDriverSection`` protects) are sections of images on
PsLoadedModuleList: a driver's own (``vbsim.nt.drivers``), or a data-only image that
:func:`load_data_section` loads (``ci.dll``'s CiPolicy): PE headers at its base, the section
behind them in fresh frames, supervisor RW/NX 4 KiB PTEs written through NT's own VP.

Every decision is a trace event of kind ``kdp`` (NT side: mechanism ``nt.kdp``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vbsim.guest.address_space import DATA_BASE, DIRECT_MAP
from vbsim.hw.cpu import Cpu
from vbsim.hw.pagetable import PageTables
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, PTE_ADDR_MASK, Pte
from vbsim.nt import pfn as mm
from vbsim.nt.kernel import bugcheck
from vbsim.nt.layouts import (
    COPY_ALLOCATE,
    IMAGE_DOS_HEADER,
    IMAGE_NT_HEADERS64,
    IMAGE_SECTION_HEADER,
    KLDR_DATA_TABLE_ENTRY,
    NORMAL_GET_PHYSICAL_PAGES,
    mdl_bytes,
    read_field,
    write_field,
)
from vbsim.ntstatus import BugCheck, NtStatus
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.nt.kernel import NtKernel


#: Where driver data sections are mapped (the model's layout: 256 GiB above NT's own data, in the
#: same PML4 slot, so every process shares them).
SECTION_BASE = DATA_BASE + (256 << 30)


@dataclass
class Section:
    """A driver data section: its VA and the frames behind it."""

    name: str
    va: int
    pfns: list[int]

    @property
    def size(self) -> int:
        return len(self.pfns) * PAGE_SIZE

    @property
    def gpa(self) -> int:
        return self.pfns[0] << PAGE_SHIFT

    def contains(self, va: int) -> bool:
        return self.va <= va < self.va + self.size


@dataclass
class SecurePool:
    handle: int
    va: int
    base_pfn: int
    pages: int


@dataclass
class NtKdp:
    """That NT's KDP client is set up (its normal-call handler registered); what it protects
    is on PsLoadedModuleList and in the images' headers in RAM, not here."""


#: [model] NT's cursor for driver data sections (see ``NtKernel.take_system_va``).
SECTION_CURSOR = "MiNextDriverSectionVa"


def install(nt: NtKernel) -> NtKdp:
    """NT's KDP client state and its normal-call handler (idempotent)."""
    if nt.kdp_client is not None:
        return nt.kdp_client
    state = nt.kdp_client = NtKdp()
    if nt.vsl is not None:  # loader time (NtKernel's construction): a VslpNormalCallTable slot
        # [model] name: the SK's "get a physical page" request (vbs-internals §2.5).
        nt.vsl.register(NORMAL_GET_PHYSICAL_PAGES, "VslpGetPhysicalPages", get_physical_pages)
    return state


def get_physical_pages(nt: NtKernel, vp: Cpu, args: list[int]) -> list[int]:
    """Normal call from the SK: make these PFNs resident and locked (always true in the model)."""
    _event(vp, "get-physical-pages", "resident", pfns=args[:9])
    return [int(NtStatus.SUCCESS)]


def _event(vp: Cpu, what: str, outcome: str, **detail: Any) -> None:
    if vp.tracing:
        vp.emit("kdp", "nt.kdp", outcome, call=what, **detail)


def _call(nt: NtKernel, vp: Cpu, service: Service, *fields: int) -> tuple[int, list[int]]:
    if nt.vsl is None:
        return int(NtStatus.INVALID_DEVICE_STATE), []
    install(nt)
    return nt.vsl.call(vp, service, *fields)


# -- driver data sections and static KDP ---------------------------------------------------------
#: Where a data-only image's headers put its one section (the first page after the headers, as a
#: linker aligns sections: PE Format, "SectionAlignment", 4 KiB here).
_SECTION_RVA = PAGE_SIZE
#: Where the headers put the PE signature (any 8-aligned offset after the DOS header will do).
_PE_AT = 0x80


def _write_headers(vp: Cpu, base: int, section: str, pages: int) -> None:
    """The headers of a data-only image, as the loader maps them at its base (PE Format): the
    DOS header's e_lfanew, the PE signature, a COFF header with one section, a PE32+ optional
    header's Magic, and the section row (name, size, RVA, initialised read/write data)."""
    nt_headers = base + _PE_AT
    write_field(vp, base, IMAGE_DOS_HEADER.e_lfanew, _PE_AT)
    write_field(vp, nt_headers, IMAGE_NT_HEADERS64.Signature, IMAGE_NT_HEADERS64.SIGNATURE)
    write_field(vp, nt_headers, IMAGE_NT_HEADERS64.Machine, IMAGE_NT_HEADERS64.MACHINE_AMD64)
    write_field(vp, nt_headers, IMAGE_NT_HEADERS64.NumberOfSections, 1)
    optional = IMAGE_NT_HEADERS64.OPTIONAL_HEADER_SIZE
    write_field(vp, nt_headers, IMAGE_NT_HEADERS64.SizeOfOptionalHeader, optional)
    write_field(vp, nt_headers, IMAGE_NT_HEADERS64.Magic, IMAGE_NT_HEADERS64.MAGIC_PE32_PLUS)
    row = nt_headers + IMAGE_NT_HEADERS64.OPTIONAL_HEADER_AT + optional
    vp.write(row + IMAGE_SECTION_HEADER.Name.offset, section.encode()[:8].ljust(8, b"\0"))
    write_field(vp, row, IMAGE_SECTION_HEADER.VirtualSize, pages * PAGE_SIZE)
    write_field(vp, row, IMAGE_SECTION_HEADER.VirtualAddress, _SECTION_RVA)
    write_field(vp, row, IMAGE_SECTION_HEADER.SizeOfRawData, pages * PAGE_SIZE)
    write_field(vp, row, IMAGE_SECTION_HEADER.Characteristics, IMAGE_SECTION_HEADER.DATA)


def load_data_section(
    nt: NtKernel, vp: Cpu, name: str, pages: int = 1, contents: bytes = b""
) -> Section:
    """Load the data-only image ``module!section`` that ``name`` names (MmLoadSystemImage for
    an image whose one section is ``.data``-like): its headers (read-only) and the section
    (supervisor, RW, NX, filled with ``contents``) mapped in a VA range of their own, and its
    KLDR_DATA_TABLE_ENTRY on PsLoadedModuleList.  Everything NT later decides about the section
    (MmProtectDriverSection) it reads back from that entry and those headers in RAM; the
    :class:`Section` returned is the caller's handle, never consulted again.  A module already
    on the list is found there, not loaded twice."""
    from vbsim.nt.drivers import find_module, insert_module

    install(nt)
    module, _, section_name = name.partition("!")
    tables = PageTables(nt.phys(vp), nt.space.root)
    entry = find_module(nt, vp, module)
    if entry:
        base = read_field(vp, entry, KLDR_DATA_TABLE_ENTRY.DllBase)
        size = read_field(vp, entry, KLDR_DATA_TABLE_ENTRY.SizeOfImage)
        va = base + _SECTION_RVA
        found = [tables.lookup(page) for page in range(va, base + size, PAGE_SIZE)]
        frames = [(leaf & PTE_ADDR_MASK) >> PAGE_SHIFT for leaf in found if leaf is not None]
        return Section(name, va, frames)
    # the headers page, the section, and a guard page after it
    base = nt.take_system_va(vp, SECTION_CURSOR, (pages + 2) * PAGE_SIZE)
    header = nt.alloc_page(vp)  # zeroed by NT's allocator
    _write_headers(vp, DIRECT_MAP + (header << PAGE_SHIFT), section_name, pages)
    tables.map(base, header << PAGE_SHIFT, int(Pte.NX | Pte.G))
    va = base + _SECTION_RVA
    pfns: list[int] = []
    for i in range(pages):
        pfn = nt.alloc_page(vp)
        chunk = contents[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]
        vp.write(DIRECT_MAP + (pfn << PAGE_SHIFT), chunk.ljust(PAGE_SIZE, b"\0"))
        tables.map(va + i * PAGE_SIZE, pfn << PAGE_SHIFT, int(Pte.RW | Pte.NX | Pte.G))
        pfns.append(pfn)
    insert_module(nt, vp, module, base, 0, (pages + 1) * PAGE_SIZE)
    _event(vp, "load-data-section", "mapped", section=name, va=va, pages=pages)
    return Section(name, va, pfns)


#: MmProtectDriverSection's bugcheck parameter 1 for an address outside every loaded driver image
#: (MS Learn: "the system will crash with MEMORY_MANAGEMENT bug check (type 0x1100)").
MM_PROTECT_NOT_AN_IMAGE = 0x1100


def _module_at(nt: NtKernel, vp: Cpu, address: int) -> tuple[int, int] | None:
    """MiLookupDataTableEntry by address: the (DllBase, SizeOfImage) of the entry of
    PsLoadedModuleList, walked in RAM, whose image contains ``address``."""
    from vbsim.nt.drivers import modules

    for entry in modules(nt, vp):
        base = read_field(vp, entry, KLDR_DATA_TABLE_ENTRY.DllBase)
        size = read_field(vp, entry, KLDR_DATA_TABLE_ENTRY.SizeOfImage)
        if base <= address < base + size:
            return base, size
    return None


def _image_section(nt: NtKernel, vp: Cpu, address: int) -> tuple[int, int] | int | None:
    """The data section of a loaded driver image that contains ``address``, as NT finds it: the
    module from PsLoadedModuleList, then the image's own section table, read from its headers
    at DllBase (the loader maps them there; PE Format).  None: no loaded image contains it (the
    caller bugchecks).  An NTSTATUS: a code section (STATUS_INVALID_PAGE_PROTECTION, "executable
    sections are not supported", MS Learn), or no section of the table holds it, as for the
    headers, or the section does not fit the image ([model] STATUS_INVALID_PARAMETER: Learn
    names no status for it).  What a kernel writer changes in the headers changes the answer,
    as it would on Windows."""
    module = _module_at(nt, vp, address)
    if module is None:
        return None
    base, size = module
    nt_headers = base + read_field(vp, base, IMAGE_DOS_HEADER.e_lfanew)
    count = read_field(vp, nt_headers, IMAGE_NT_HEADERS64.NumberOfSections)
    optional = read_field(vp, nt_headers, IMAGE_NT_HEADERS64.SizeOfOptionalHeader)
    table = nt_headers + IMAGE_NT_HEADERS64.OPTIONAL_HEADER_AT + optional
    rva = address - base
    for row in range(min(count, IMAGE_NT_HEADERS64.MAX_SECTIONS)):
        header = table + row * IMAGE_SECTION_HEADER.SIZE
        start = read_field(vp, header, IMAGE_SECTION_HEADER.VirtualAddress)
        span = read_field(vp, header, IMAGE_SECTION_HEADER.VirtualSize) or read_field(
            vp, header, IMAGE_SECTION_HEADER.SizeOfRawData
        )
        end = start + -(-span // PAGE_SIZE) * PAGE_SIZE
        if not start <= rva < end:
            continue
        characteristics = read_field(vp, header, IMAGE_SECTION_HEADER.Characteristics)
        if characteristics & IMAGE_SECTION_HEADER.MEM_EXECUTE:
            return int(NtStatus.INVALID_PAGE_PROTECTION)
        if start < PAGE_SIZE or end > size:
            break
        return base + start, base + end
    return int(NtStatus.INVALID_PARAMETER)


def mm_protect_driver_section(
    nt: NtKernel, vp: Cpu, address: int, size: int = 0, flags: int = 0
) -> int:
    """MmProtectDriverSection: make the driver section containing ``address`` read-only for the
    whole of VTL0, through the Secure Kernel (MS Learn, MmProtectDriverSection)."""
    if nt.vsl is None:
        # "Virtual Secure Mode (VSM) is currently disabled" — the only case for this status.
        _event(vp, "MmProtectDriverSection", "refused", reason="no-vsm")
        return int(NtStatus.INVALID_DEVICE_STATE)
    if size != 0:
        # "An invalid flags bitmask (or a non-zero size) has been specified" (MS Learn).
        _event(vp, "MmProtectDriverSection", "refused", reason="size", size=size)
        return int(NtStatus.INVALID_PARAMETER)
    install(nt)
    found = _image_section(nt, vp, address)
    if found is None:
        bugcheck(vp, BugCheck.MEMORY_MANAGEMENT, MM_PROTECT_NOT_AN_IMAGE, address)
    if isinstance(found, int):
        _event(vp, "MmProtectDriverSection", "refused", reason=NtStatus.name_of(found), va=address)
        return found
    start, end = found
    service = (
        Service.PROTECT_KERNEL_DATA_PAGE
        if Service.PROTECT_KERNEL_DATA_PAGE in nt.vsl.table
        else Service.REGISTER_PROTECTED_PAGE
    )
    status, _ = nt.vsl.call(vp, service, start, (end - start) >> PAGE_SHIFT, flags)
    _event(
        vp,
        "MmProtectDriverSection",
        NtStatus.name_of(status),
        service=service.value,
        va=start,
        pages=(end - start) >> PAGE_SHIFT,
    )
    return status


# -- the secure pool -----------------------------------------------------------------------------
def ex_create_secure_pool(nt: NtKernel, vp: Cpu, pages: int = 1) -> tuple[int, SecurePool | None]:
    if nt.vsl is None:
        return int(NtStatus.INVALID_DEVICE_STATE), None
    try:
        base = mm.allocate_contiguous(vp, nt.pfn_database, nt.free_list_head, pages)
    except mm.NoPages:
        return int(NtStatus.NO_MEMORY), None
    va = DIRECT_MAP + (base << PAGE_SHIFT)
    status, out = _call(nt, vp, Service.INITIALIZE_SECURE_POOL, base, pages, va)
    _event(vp, "ExCreatePool", NtStatus.name_of(status), va=va, pages=pages)
    if status != NtStatus.SUCCESS or not out:
        for frame in range(base, base + pages):
            nt.free_page(vp, frame)
        return status, None
    return status, SecurePool(out[0], va, base, pages)


def _staged(nt: NtKernel, vp: Cpu, data: bytes) -> tuple[int, int]:
    """A VTL0 kernel page holding ``data`` (≤ one page): (VA, PFN)."""
    va, gpa = nt.alloc_kernel_page(vp)
    vp.write(va, data[:PAGE_SIZE])
    return va, gpa >> PAGE_SHIFT


def secure_pool_call(
    nt: NtKernel,
    vp: Cpu,
    pool_handle: int,
    tag: int,
    allocation: int,
    cookie: int,
    offset: int,
    data: bytes,
    flags: int = 0,
) -> tuple[int, list[int]]:
    """COPY_PROTECTED_PAGE with ``data`` staged in a VTL0 page (the raw secure call)."""
    _, staged = _staged(nt, vp, data)
    try:
        return _call(
            nt,
            vp,
            Service.COPY_PROTECTED_PAGE,
            pool_handle,
            tag,
            allocation,
            cookie,
            offset,
            len(data),
            staged,
            0,
            flags,
        )
    finally:
        nt.free_page(vp, staged)


def ex_allocate_pool3_secure(
    nt: NtKernel, vp: Cpu, pool: SecurePool, tag: int, contents: bytes, cookie: int
) -> tuple[int, int]:
    """ExAllocatePool3 with POOL_EXTENDED_PARAMS_SECURE_POOL {handle, buffer, cookie}: (status,
    allocation VA)."""
    status, out = secure_pool_call(
        nt, vp, pool.handle, tag, 0, cookie, 0, contents, flags=COPY_ALLOCATE
    )
    _event(vp, "ExAllocatePool3", NtStatus.name_of(status), tag=tag, size=len(contents))
    return status, (out[0] if status == NtStatus.SUCCESS and out else 0)


def secure_pool_update_raw(
    nt: NtKernel,
    vp: Cpu,
    pool: SecurePool,
    tag: int,
    allocation: int,
    cookie: int,
    offset: int,
    data: bytes,
) -> int:
    return secure_pool_call(nt, vp, pool.handle, tag, allocation, cookie, offset, data)[0]


def ex_secure_pool_update(
    nt: NtKernel,
    vp: Cpu,
    pool: SecurePool,
    tag: int,
    allocation: int,
    cookie: int,
    offset: int,
    data: bytes,
) -> int:
    """ExSecurePoolUpdate: BAD_POOL_CALLER when the SK refuses (vbs-internals §5.2)."""
    status = secure_pool_update_raw(nt, vp, pool, tag, allocation, cookie, offset, data)
    _event(vp, "ExSecurePoolUpdate", NtStatus.name_of(status), allocation=allocation)
    if status != NtStatus.SUCCESS:
        bugcheck(vp, BugCheck.BAD_POOL_CALLER, status, allocation)
    return status


# -- secure allocations (CREATE_/FILL_SECURE_ALLOCATION) -----------------------------------------
def create_secure_allocation(nt: NtKernel, vp: Cpu, size: int) -> tuple[int, int]:
    status, out = _call(nt, vp, Service.CREATE_SECURE_ALLOCATION, size)
    return status, (out[0] if status == NtStatus.SUCCESS and out else 0)


def stage_buffer(nt: NtKernel, vp: Cpu, data: bytes) -> list[int]:
    """VTL0 kernel pages holding ``data``; their PFNs (what an MDL's PFN array lists)."""
    pfns = []
    for start in range(0, max(len(data), 1), PAGE_SIZE):
        _, pfn = _staged(nt, vp, data[start : start + PAGE_SIZE])
        pfns.append(pfn)
    return pfns


def build_mdl(
    nt: NtKernel,
    vp: Cpu,
    pfns: list[int],
    byte_count: int,
    byte_offset: int = 0,
    size: int = -1,
) -> tuple[int, int]:
    """An MDL in its own VTL0 kernel page: (MDL VA, MDL PFN)."""
    start_va = DIRECT_MAP + (pfns[0] << PAGE_SHIFT) if pfns else 0
    va, pfn = _staged(nt, vp, mdl_bytes(pfns, byte_count, byte_offset, start_va, size))
    return va, pfn


def fill_secure_allocation_raw(
    nt: NtKernel, vp: Cpu, handle: int, offset: int, mdl_va: int, mdl_pfn: int
) -> int:
    return _call(nt, vp, Service.FILL_SECURE_ALLOCATION, handle, offset, mdl_va, mdl_pfn)[0]


def fill_secure_allocation(nt: NtKernel, vp: Cpu, handle: int, offset: int, data: bytes) -> int:
    """VslFillSecureAllocation: copy ``data`` (staged in VTL0 pages, described by an MDL) into
    the secure allocation at ``offset``."""
    pfns = stage_buffer(nt, vp, data)
    mdl_va, mdl_pfn = build_mdl(nt, vp, pfns, len(data))
    try:
        return fill_secure_allocation_raw(nt, vp, handle, offset, mdl_va, mdl_pfn)
    finally:
        for frame in [*pfns, mdl_pfn]:
            nt.free_page(vp, frame)
