"""HVCI and SKCI in the Secure Kernel: the VTL0 page state machine and driver validation.

vbs-internals §5.1, §3.6, §1.3 and Appendix A item 5.  Only when the policy enables HVCI.

**The invariant.**  No VTL0 page is ever SLAT-writable and SLAT-kernel-executable at once.  Every
SLAT change this module makes goes through :func:`apply`, which refuses (raises: it would be a bug
in vbsim) a mask with both W and KX.  Rights are the HV_MAP_GPA bits R=1 W=2 KX=4 UX=8 (vsm-spec
§3.1); with MBEC off UX is ignored by the hardware and KX≠UX is invalid (vsm-spec §3.2), so
masks are normalised for that case.

**Page states** (one byte per GPA page, the SK's page-identity knowledge; App. A item 5):

=========== ============================== =====================================================
state        VTL0 SLAT rights               meaning
=========== ============================== =====================================================
UNVALIDATED  R|W|UX (R|W without MBEC)      ordinary VTL0 memory: never KX
LOCKED       R                              an image page NT handed over, hashed, awaiting KX
VALIDATED    R|KX|UX                        contents match a signed image (or the boot image)
IMAGE_DATA   R|W                            a loaded driver's data page (RW, NX)
WRITABLE     R|W|UX                         validated code made writable by the sanctioned
                                            MAKE_PROTECTED_PAGE_WRITABLE: KX lost, hash kept
=========== ============================== =====================================================

**How the SK learns NT's boot code pages (design choice).**  At phase 1 the SK still fully trusts
VTL0 and the loader (vbs-internals §1.1 rows 11-12: ``OslVsmSetup(2)`` enters the SK with the
``OslVsmLoaderBlock``, and phase 1 "creates NARs/NTEs for boot-loaded images").  In the model the
loader block's list of boot-loaded images is one virtual range, ``[CODE_BASE, CODE_BASE +
BOOT_IMAGE_SPAN)`` — where winload (``KernelSpace``) places ntoskrnl's code — and the address
space it lives in is the loader's CR3, which the SK reads from the boot VP's VTL0 state with
HvCallGetVpRegisters.  The SK walks those page tables itself (through its own direct map, in
VTL1) and takes every present, supervisor, read-only, executable 4 KiB leaf in the range as a
boot-image code page: it checks that the page holds only guest-code thunks (or zeros), records
its hash and makes it R|KX|UX.  Nothing NT does later can add to that set: the walk happens once,
inside phase 1, before VTL0 runs again.  Drivers are loaded outside that range
(``vbsim.nt.drivers``).

**Driver load** (§5.1 steps; secure-call fields are the model's, as the real layouts are [U]):

- ``CREATE_SECURE_IMAGE`` (Field1 image size in bytes, Field2 PFN of a VTL0 page holding the PFN
  list of the file pages, Field3 number of PFNs).  The SK *captures* the bytes into VTL1 before
  any check (vbs-internals §6 A9), verifies the Authenticode signature against the root in
  SKCI's anchor record and the driver requirement stored with it (SK memory, read now:
  ``skci.signature``), checks the image is a driver and that
  its layout is HVCI-compatible (page-aligned sections, no page both code and data, no W+X
  section).  Output: a secure-image handle.  Failure: STATUS_INVALID_IMAGE_HASH (McGarr-SI).
- ``FINISH_SECURE_IMAGE_VALIDATION`` (Field1 handle, Field2 PFN of the list of the mapped image
  pages in RVA order, Field3 count).  The SK first takes W away from the code pages (so nothing
  can change between the hash and KX), then hashes the physical pages it sees against the
  captured image (``skci.page-hash``).  A mismatch gives the pages back unvalidated.
- ``LOAD_DRIVER`` (Field1 handle): code pages become R|KX|UX, data pages R|W.
- ``UNLOAD_DRIVER`` (Field1 handle): every page of the image goes back to UNVALIDATED.

**Sanctioned transitions.**  ``MAKE_PROTECTED_PAGE_WRITABLE`` (Field1 PFN): a VALIDATED page
becomes R|W|UX and loses KX.  ``MAKE_PROTECTED_PAGE_EXECUTABLE`` (Field1 PFN, Field2 requested
HV_MAP_GPA rights, 0 = R|KX|UX): a request for W together with KX is refused with
STATUS_INVALID_PAGE_PROTECTION (``hvci.w^x``, the model's choice of status); otherwise W is taken
away, the page is re-hashed, and KX comes back only if the contents equal the validated hash —
an unvalidated page (no signed hash covers it) gets STATUS_INVALID_IMAGE_HASH.

Without HVCI the services answer STATUS_NOT_SUPPORTED: there is no SK enforcement, NT's own
code integrity (DSE, ``vbsim.nt.drivers``) decides alone.

**Other owners of VTL0 pages.**  Pages the SK took for itself or for trustlets are not VTL0's
(``sk.vtl0_page``) and every service refuses them.  Pages KDP made read-only keep that: HVCI never
raises their rights (:func:`apply` leaves them alone, ``hvci.kdp``) and refuses them as image
pages.  Other modules that hand a page back to VTL0 should use :func:`vtl0_default_rights`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from vbsim.guest import hvcall
from vbsim.guest.address_space import CODE_BASE
from vbsim.hv.defs import HvMapGpaFlags, HvRegisterName
from vbsim.hw import code
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, PTE_ADDR_MASK, Pte
from vbsim.image import ImageKind, ParsedImage, anchors
from vbsim.ntstatus import NtStatus
from vbsim.sk import layouts as L
from vbsim.sk import objects
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.kernel import PoolExhausted, Reply, SecureKernel
from vbsim.sk.layouts import Config, Mem, ObjectType, read_field, write_field
from vbsim.sk.layouts import SecureImage as Img
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu

#: VTL protection rights, the HV_MAP_GPA bits (TLFS; vsm-spec §3.1).
R, W, KX, UX = (
    int(HvMapGpaFlags.READABLE),
    int(HvMapGpaFlags.WRITABLE),
    int(HvMapGpaFlags.KERNEL_EXECUTABLE),
    int(HvMapGpaFlags.USER_EXECUTABLE),
)


def describe(mask: int) -> str:
    """'R', 'RW', 'R+KX', 'R+UX', 'RW+KX+UX', 'none' ... (for traces)."""
    if not mask & (R | W | KX | UX):
        return "none"
    data = ("R" if mask & R else "") + ("W" if mask & W else "")
    execs = [name for bit, name in ((KX, "KX"), (UX, "UX")) if mask & bit]
    return "+".join([data or "-", *execs]) if execs else data


#: The loader block's boot-image range: ``[CODE_BASE, CODE_BASE + BOOT_IMAGE_SPAN)`` (the first
#: half of the 512 GiB PML4 slot of CODE_BASE; NT loads drivers in the second half).
BOOT_IMAGE_SPAN = 256 << 30
#: Largest image the SK captures (vbsim.image's parser has its own larger cap).
MAX_IMAGE_PAGES = 256
MAX_IMAGE_SIZE = MAX_IMAGE_PAGES * PAGE_SIZE
#: A PFN list must fit in the one VTL0 page that carries it.
MAX_LIST = PAGE_SIZE // 8
#: Secure images alive at once (the SK's pool is finite; a VTL0 flood gets STATUS_NO_MEMORY).
MAX_SECURE_IMAGES = 256
SECURE_IMAGE = ObjectType.SECURE_IMAGE
EXT_KEY = "hvci"

_SCN_MEM_WRITE = 0x8000_0000  # IMAGE_SCN_MEM_WRITE (PE/COFF spec)
_P, _RW, _US, _PS, _NX = int(Pte.P), int(Pte.RW), int(Pte.US), int(Pte.PS), int(Pte.NX)
_HIGH_HALF = 0xFFFF << 48


class PageState(IntEnum):
    UNVALIDATED = 0
    LOCKED = 1
    VALIDATED = 2
    IMAGE_DATA = 3
    WRITABLE = 4


@dataclass(frozen=True)
class Hvci:
    """Where HVCI's state lives in SK memory (``vbsim.sk.layouts.Hvci``): addresses only.

    Every value is read through the SK's processor at the moment it is needed: the page-state
    table and the rights table (one byte per GPA page each, physically contiguous so host-side
    tools find them from one GPA) and the validated-hash records.  The records sit right behind
    the secure-allocation arena (``allocation``): that is the SK data the CVE-2020-0917-class
    overflow of A8/A9 lands on.

    SKCI's own data is here too: its anchor record (``ci_va``, ``vbsim.image.anchors``), the
    root certificate skci.dll pins and the driver and trustlet requirements, which both driver
    validation (below) and trustlet admission (``sk.ium.skci``) read at each verification.  An
    SK data page: VTL0 has no SLAT access to it, so no VTL0 write changes what SKCI trusts."""

    states_va: int
    states_gpa: int
    rights_va: int
    rights_gpa: int
    hashes_va: int
    hashes_gpa: int
    pages: int
    ci_va: int = 0
    ci_gpa: int = 0

    # -- page states and rights (one byte per GPA page) -----------------------------------------
    def state(self, vp: Mem, gpn: int) -> int:
        if not 0 <= gpn < self.pages:
            return PageState.UNVALIDATED
        return vp.read(self.states_va + gpn, 1)[0]

    def set_state(self, vp: Mem, gpns: list[int], value: int) -> None:
        _set_bytes(vp, self.states_va, self.pages, gpns, value)

    def rights(self, vp: Mem, gpn: int) -> int:
        return vp.read(self.rights_va + gpn, 1)[0] if 0 <= gpn < self.pages else 0xF

    def set_rights(self, vp: Mem, gpns: list[int], value: int) -> None:
        _set_bytes(vp, self.rights_va, self.pages, gpns, value)

    def set_rights_except(self, vp: Mem, skip: list[int], value: int) -> None:
        """``set_rights`` for every page but the sorted in-range ``skip`` (one read and one
        write of the table, no per-page Python loop over all of RAM)."""
        if not self.pages:
            return
        table = bytearray(vp.read(self.rights_va, self.pages))
        kept = [table[gpn] for gpn in skip]
        table[:] = bytes([value]) * self.pages
        for gpn, old in zip(skip, kept, strict=True):
            table[gpn] = old
        vp.write(self.rights_va, bytes(table))

    # -- validated hashes (records searched by GPN; the first record for a GPN wins) -----------
    def _records(self, vp: Mem) -> tuple[int, bytes]:
        count = min(read_field(vp, self.hashes_va, L.Hvci.HASH_COUNT), L.Hvci.HASH_MAX)
        return count, vp.read(self.hashes_va + L.Hvci.HASH_RECORDS, count * L.Hvci.RECORD_SIZE)

    def _find(self, raw: bytes, gpn: int) -> int:
        key = gpn.to_bytes(8, "little")
        for offset in range(0, len(raw), L.Hvci.RECORD_SIZE):
            if raw[offset : offset + 8] == key:
                return offset // L.Hvci.RECORD_SIZE
        return -1

    def hash_of(self, vp: Mem, gpn: int) -> bytes | None:
        _, raw = self._records(vp)
        index = self._find(raw, gpn)
        if index < 0:
            return None
        offset = index * L.Hvci.RECORD_SIZE + L.Hvci.RECORD_SHA256.offset
        return bytes(raw[offset : offset + 32])

    def set_hash(self, vp: Mem, gpn: int, digest: bytes) -> bool:
        count, raw = self._records(vp)
        index = self._find(raw, gpn)
        if index < 0:
            index = self._find(raw, L.Hvci.NO_GPN)
        if index < 0:
            capacity = read_field(vp, self.hashes_va, L.Hvci.HASH_CAPACITY)
            if count >= min(capacity, L.Hvci.HASH_MAX):
                return False
            index = count
            write_field(vp, self.hashes_va, L.Hvci.HASH_COUNT, count + 1)
        base = self.hashes_va + L.Hvci.HASH_RECORDS + index * L.Hvci.RECORD_SIZE
        vp.write(base, gpn.to_bytes(8, "little") + digest)
        return True

    def drop_hash(self, vp: Mem, gpn: int) -> None:
        _, raw = self._records(vp)
        index = self._find(raw, gpn)
        if index >= 0:
            base = self.hashes_va + L.Hvci.HASH_RECORDS + index * L.Hvci.RECORD_SIZE
            vp.write(base, L.Hvci.NO_GPN.to_bytes(8, "little") + bytes(32))


def _all_but(pages: int, skip: list[int]) -> list[int]:
    """``[0, pages)`` without the sorted in-range ``skip``, in order."""
    out: list[int] = []
    start = 0
    for gpn in skip:
        out.extend(range(start, gpn))
        start = gpn + 1
    out.extend(range(start, pages))
    return out


def _set_bytes(vp: Mem, base: int, limit: int, gpns: list[int], value: int) -> None:
    """Set one byte per GPN in a table (one read and one write of the span for many pages)."""
    gpns = [gpn for gpn in gpns if 0 <= gpn < limit]
    if not gpns:
        return
    if len(gpns) <= 4:
        for gpn in gpns:
            vp.write(base + gpn, bytes([value]))
        return
    low, high = min(gpns), max(gpns)
    span = bytearray(vp.read(base + low, high - low + 1))
    for gpn in gpns:
        span[gpn - low] = value
    vp.write(base + low, bytes(span))


def mbec(sk: SecureKernel, vp: Mem) -> bool:
    return bool(sk.config(vp, Config.MBEC))


def unvalidated(sk: SecureKernel, vp: Mem) -> int:
    """The rights of an ordinary VTL0 page under HVCI: R|W|UX (R|W without MBEC)."""
    return R | W | UX if mbec(sk, vp) else R | W


@dataclass(frozen=True)
class ImageLayout:
    """An image as the loader lays it out in memory: one bytes object per page, and which
    page indices hold code."""

    pages: tuple[bytes, ...]
    code: frozenset[int]


def image_layout(data: bytes, parsed: ParsedImage) -> ImageLayout | None:
    """Headers at RVA 0, each section's raw data at its RVA (``min(raw, virtual)`` bytes, the rest
    zero).  None when the image is not HVCI-compatible: a section not page-aligned, a writable
    executable section, a page holding both code and data, or too large."""
    header_pages = max(1, -(-parsed.size_of_headers // PAGE_SIZE))
    end = header_pages * PAGE_SIZE
    for section in parsed.sections:
        span = section.virtual_size or section.raw_size
        end = max(end, section.virtual_address + span)
    count = -(-end // PAGE_SIZE)
    if not 0 < count <= MAX_IMAGE_PAGES:
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


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- the one place VTL0 SLAT rights change --------------------------------------------------------
def _normalise(sk: SecureKernel, vp: Mem, flags: int) -> int:
    """With MBEC off KX alone governs execution and KX≠UX is invalid (vsm-spec §3.2)."""
    if mbec(sk, vp):
        return flags
    return flags | UX if flags & KX else flags & ~UX


def apply(sk: SecureKernel, vp: Cpu, gpns: list[int], flags: int, why: str) -> bool:
    """Set VTL0's rights on ``gpns`` (ModifyVtlProtectionMask from VTL1), enforcing W^KX."""
    state = _state(sk)
    flags = _normalise(sk, vp, flags)
    if flags & W and flags & KX:
        sk.emit(vp, "hvci", "hvci.w^x", "violation", rights=describe(flags), why=why)
        raise AssertionError(f"HVCI would grant W+KX to {len(gpns)} VTL0 page(s) ({why})")
    if flags & ~R:
        # A page KDP owns stays as KDP made it (read-only): HVCI never raises its rights.
        from vbsim.sk.services import kdp

        kept = kdp.protected(sk, vp, gpns)
        if kept:
            sk.emit(vp, "hvci", "hvci.kdp", "kept-read-only", pages=len(kept), why=why)
            gpns = [gpn for gpn in gpns if gpn not in kept]
    if not gpns:
        return True
    ok = sk.set_vtl0_rights(vp, gpns, flags)
    if ok:
        state.set_rights(vp, gpns, flags)
    sk.emit(
        vp,
        "hvci",
        "hvci.slat",
        "set" if ok else "failed",
        rights=describe(flags),
        pages=len(gpns),
        first_gpa=gpns[0] << PAGE_SHIFT,
        why=why,
    )
    return ok


def vtl0_default_rights(sk: SecureKernel, vp: Mem) -> int:
    """The rights an ordinary VTL0 page has: R|W|UX under HVCI (R|W without MBEC), else all."""
    return unvalidated(sk, vp) if sk.config(vp, Config.HVCI) else R | W | KX | UX


def ordinary_page(sk: SecureKernel, vp: Mem, gpn: int) -> bool:
    """Whether ``gpn`` is a plain VTL0 page NT may give away: not owned by KDP and not carrying
    rights HVCI set for code (validated, locked or image pages).  Pages NT offers the SK as free
    memory must pass this, or a compromised NT could make the SK clear protected memory."""
    if _kdp_protected(sk, vp, gpn):
        return False
    if not sk.config(vp, Config.HVCI):
        return True
    return _state(sk).state(vp, gpn) == PageState.UNVALIDATED


def _kdp_protected(sk: SecureKernel, vp: Mem, gpn: int) -> bool:
    """KDP's page ownership (static KDP and the secure pool): its pages are VTL0 read-only for
    good, and no other service may give them more rights (``vbsim.sk.services.kdp``)."""
    from vbsim.sk.services import kdp

    return kdp.is_protected(sk, vp, gpn)


def _state(sk: SecureKernel) -> Hvci:
    state = sk.hvci
    assert isinstance(state, Hvci)
    return state


def _enabled(sk: SecureKernel, vp: Cpu, service: Service) -> Hvci | None:
    """HVCI's tables, when the SK's configuration (in its memory) enables HVCI."""
    if not sk.config(vp, Config.HVCI):
        sk.emit(vp, "hvci", "hvci.off", "not-supported", service=service.value)
        return None
    return _state(sk)


def _refuse(
    sk: SecureKernel,
    vp: Cpu,
    kind: str,
    mechanism: str,
    status: NtStatus,
    **detail: Any,
) -> Reply:
    sk.emit(vp, kind, mechanism, "refused", status=NtStatus.name_of(status), **detail)
    return Reply(status)


def _read_page(sk: SecureKernel, vp: Cpu, pfn: int) -> bytes:
    return vp.read(sk.space.phys_va(pfn << PAGE_SHIFT), PAGE_SIZE)


def _capture_pfn_list(sk: SecureKernel, vp: Cpu, list_pfn: int, count: int) -> list[int] | None:
    """Copy a PFN list out of VTL0 (one page), then check every entry is VTL0 RAM."""
    if not 0 < count <= MAX_LIST or not sk.vtl0_page(vp, list_pfn):
        return None
    raw = vp.read(sk.space.phys_va(list_pfn << PAGE_SHIFT), count * 8)
    pfns = [int.from_bytes(raw[i * 8 : i * 8 + 8], "little") for i in range(count)]
    if not all(sk.vtl0_page(vp, pfn) for pfn in pfns):
        return None
    return pfns


# -- phase 1: the initial SLAT --------------------------------------------------------------------
def _boot_image_pages(sk: SecureKernel, vp: Cpu) -> list[tuple[int, int]]:
    """(VA, PFN) of every present supervisor read-only executable 4 KiB page mapped in the
    loader block's boot-image range of VTL0's (the loader's) address space."""
    result, values = hvcall.get_vp_registers(vp, sk.params, [int(HvRegisterName.CR3)], target_vtl=0)
    if not result.ok or not values:
        return []
    lo, hi = CODE_BASE, CODE_BASE + BOOT_IMAGE_SPAN
    found: list[tuple[int, int]] = []
    ram_size = sk.config(vp, Config.RAM_PAGES) << PAGE_SHIFT

    def walk(table: int, shift: int, base: int, writable: bool, user: bool, nx: bool) -> None:
        if table + PAGE_SIZE > ram_size:
            return
        span = 1 << shift
        for index in range(512):
            va = base + index * span
            if shift == 39 and index >= 256:
                va |= _HIGH_HALF
            if va + span <= lo or va >= hi:
                continue
            entry = vp.read_u64(sk.space.phys_va(table + index * 8))
            if not entry & _P:
                continue
            w, u, x = (
                writable and bool(entry & _RW),
                user and bool(entry & _US),
                nx or bool(entry & _NX),
            )
            if shift == 12:
                if not (w or u or x):
                    found.append((va, (entry & PTE_ADDR_MASK) >> PAGE_SHIFT))
            elif not entry & _PS:
                walk(entry & PTE_ADDR_MASK, shift - 9, va, w, u, x)

    walk(values[0] & PTE_ADDR_MASK, 39, 0, True, True, False)
    return found


def _looks_like_code(page: bytes) -> bool:
    """Every 32-byte slot is a guest-code thunk or empty (the format check of a code page)."""
    empty = bytes(code.THUNK_SIZE)
    for offset in range(0, PAGE_SIZE, code.THUNK_SIZE):
        slot = page[offset : offset + code.THUNK_SIZE]
        if slot != empty and not slot.startswith(code.THUNK_MAGIC):
            return False
    return True


def phase1(sk: SecureKernel, vp: Cpu) -> None:
    """Every VTL0 page R|W|UX (never KX); the boot image's code pages R|KX|UX, validated."""
    if not sk.config(vp, Config.HVCI):
        return
    pages = sk.config(vp, Config.RAM_PAGES)
    state = _state(sk)
    own = set(sk.own_pages(vp))
    validated: list[int] = []
    for va, pfn in _boot_image_pages(sk, vp):
        if not 0 < pfn < pages or pfn in own or pfn in validated:
            continue
        content = _read_page(sk, vp, pfn)
        if not _looks_like_code(content):
            sk.emit(vp, "skci", "skci.boot-image", "refused", va=va, gpa=pfn << PAGE_SHIFT)
            continue
        if not state.set_hash(vp, pfn, _digest(content)):
            sk.emit(vp, "skci", "skci.boot-image", "no-record", va=va, gpa=pfn << PAGE_SHIFT)
            continue
        validated.append(pfn)
    # Page 0 (firmware's, never handed out) is VTL0 RAM too, though no secure call may name it.
    # Ordinary pages: every page but the validated code and the SK's own (a small set).
    skip = sorted({pfn for pfn in (*validated, *own) if 0 <= pfn < pages})
    ordinary_count = pages - len(skip)
    default = unvalidated(sk, vp)
    if sk.config(vp, Config.VTL0_DEFAULT_MASK) == default:
        # The SK enabled VTL protection with HVCI's default already (DefaultVtlProtectionMask,
        # vsm-spec §3.4): every page got R|W|UX then; only the bookkeeping is left to do.
        state.set_rights_except(vp, skip, default)
    else:
        apply(sk, vp, _all_but(pages, skip), default, "boot")
    if apply(sk, vp, validated, R | KX | UX, "boot-image"):
        state.set_state(vp, validated, PageState.VALIDATED)
    sk.emit(
        vp,
        "hvci",
        "hvci.boot",
        "enabled",
        mbec=mbec(sk, vp),
        code_pages=len(validated),
        vtl0_pages=ordinary_count + len(validated),
    )


# -- driver load ----------------------------------------------------------------------------------
def create_secure_image(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    service = Service.CREATE_SECURE_IMAGE
    if _enabled(sk, vp, service) is None:
        return Reply(NtStatus.NOT_SUPPORTED)
    size, list_pfn, count = args.fields[0], args.fields[1], args.fields[2]
    if not 0 < size <= MAX_IMAGE_SIZE or count != -(-size // PAGE_SIZE):
        return _refuse(sk, vp, "skci", "skci.capture", NtStatus.INVALID_PARAMETER, size=size)
    live = len(objects.entries(sk, vp, SECURE_IMAGE))  # the handle table, now
    if live >= MAX_SECURE_IMAGES:
        return _refuse(sk, vp, "skci", "skci.capture", NtStatus.NO_MEMORY, live=live)
    pfns = _capture_pfn_list(sk, vp, list_pfn, count)
    if pfns is None:
        return _refuse(sk, vp, "skci", "skci.capture", NtStatus.INVALID_PARAMETER, pfn=list_pfn)
    # The capture: from here on the SK works on its own copy; VTL0 may change its pages freely.
    captured = b"".join(_read_page(sk, vp, pfn) for pfn in pfns)[:size]
    result = anchors.verify(captured, anchor(sk, vp, ImageKind.DRIVER), at=sk.system_time(vp))
    parsed = result.image
    if not result.ok or parsed is None:
        return _refuse(
            sk,
            vp,
            "skci",
            "skci.signature",
            NtStatus.INVALID_IMAGE_HASH,
            failure=str(result.failure),
            detail=result.detail,
        )
    if parsed.kind is not ImageKind.DRIVER:
        return _refuse(
            sk, vp, "skci", "skci.kind", NtStatus.INVALID_IMAGE_HASH, image_kind=str(parsed.kind)
        )
    layout = image_layout(captured, parsed)
    if layout is None:
        return _refuse(sk, vp, "skci", "skci.hvci-compatible", NtStatus.INVALID_IMAGE_HASH)
    body = _new_image(sk, vp, parsed.name or "", layout)
    handle = objects.insert(sk, vp, SECURE_IMAGE, body) if body is not None else None
    if body is None or handle is None:
        if body is not None:
            free_image(sk, vp, body)
        return _refuse(sk, vp, "skci", "skci.capture", NtStatus.NO_MEMORY, live=live)
    sk.emit(
        vp,
        "skci",
        "skci.signature",
        "verified",
        image=parsed.name,
        signer=result.chain[0].subject if result.chain else None,
        handle=handle,
    )
    return Reply(NtStatus.SUCCESS, [handle])


# -- the SECURE_IMAGE object (``layouts.SecureImage``): SK frames the handle table points to ----
def _new_image(sk: SecureKernel, vp: Cpu, name: str, layout: ImageLayout) -> int | None:
    """The object body for a captured image: stage, page count, name, code bitmap and each
    page's SHA-256 as the signed image lays it out; None when the SK's pool is exhausted."""
    count = len(layout.pages)
    frames: list[int] = []
    try:
        frames.append(sk.alloc_frame(vp))
        for _ in range(-(-count // Img.DIGESTS_PER_FRAME)):
            frames.append(sk.alloc_frame(vp))
    except PoolExhausted:
        for pfn in frames:
            sk.free_frame(vp, pfn)
        return None
    va = sk.space.phys_va(frames[0] << PAGE_SHIFT)
    write_field(vp, va, Img.PAGE_COUNT, count)
    vp.write(va + Img.NAME.offset, name.encode("ascii", "replace")[: Img.NAME.size - 1])
    bitmap = bytearray(Img.MAX_PAGES // 8)
    for index in layout.code:
        bitmap[index >> 3] |= 1 << (index & 7)
    vp.write(va + Img.CODE, bytes(bitmap))
    for n, pfn in enumerate(frames[1:]):
        vp.write_u64(va + Img.DIGEST_FRAME + 8 * n, pfn)
        chunk = layout.pages[n * Img.DIGESTS_PER_FRAME : (n + 1) * Img.DIGESTS_PER_FRAME]
        vp.write(sk.space.phys_va(pfn << PAGE_SHIFT), b"".join(_digest(p) for p in chunk))
    write_field(vp, va, Img.STAGE, Img.CREATED)
    return va


def free_image(sk: SecureKernel, vp: Cpu, va: int) -> None:
    """Give a SECURE_IMAGE body's frames (the body and its digest frames) back to the pool."""
    for n in range(Img.DIGEST_FRAMES):
        pfn = vp.read_u64(va + Img.DIGEST_FRAME + 8 * n)
        if pfn:
            sk.free_frame(vp, pfn)
    sk.free_frame(vp, (va - sk.space.phys_va(0)) >> PAGE_SHIFT)


def _image(sk: SecureKernel, vp: Cpu, handle: int, stages: tuple[int, ...]) -> int | None:
    """The SECURE_IMAGE ``handle`` names (its body's VA) if its stage is one of ``stages``:
    the handle table and the body's STAGE field decide, read now."""
    kind, va = objects.lookup(sk, vp, handle)
    if kind != SECURE_IMAGE or not va or read_field(vp, va, Img.STAGE) not in stages:
        return None
    return va


def _image_name(vp: Mem, va: int) -> str:
    return vp.read(va + Img.NAME.offset, Img.NAME.size).split(b"\0", 1)[0].decode("ascii")


def _image_code(vp: Mem, va: int) -> set[int]:
    """The captured layout's code page indices (the body's bitmap)."""
    count = min(read_field(vp, va, Img.PAGE_COUNT), Img.MAX_PAGES)
    bitmap = vp.read(va + Img.CODE, Img.MAX_PAGES // 8)
    return {i for i in range(count) if bitmap[i >> 3] >> (i & 7) & 1}


def _image_digest(sk: SecureKernel, vp: Mem, va: int, index: int) -> bytes:
    """The SHA-256 of page ``index`` of the signed image's layout, as SKCI captured it."""
    frame, slot = divmod(index, Img.DIGESTS_PER_FRAME)
    pfn = vp.read_u64(va + Img.DIGEST_FRAME + 8 * frame) if frame < Img.DIGEST_FRAMES else 0
    if not pfn:
        return bytes(Img.DIGEST)
    return vp.read(sk.space.phys_va((pfn << PAGE_SHIFT) + slot * Img.DIGEST), Img.DIGEST)


def _image_pfns(vp: Mem, va: int) -> list[int]:
    """The mapped pages FINISH recorded, in RVA order ([] before)."""
    count = min(read_field(vp, va, Img.PFN_COUNT), Img.MAX_PAGES)
    raw = vp.read(va + Img.PFNS, 8 * count)
    return [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]


def finish_secure_image_validation(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    state = _enabled(sk, vp, Service.FINISH_SECURE_IMAGE_VALIDATION)
    if state is None:
        return Reply(NtStatus.NOT_SUPPORTED)
    handle, list_pfn, count = args.fields[0], args.fields[1], args.fields[2]
    obj = _image(sk, vp, handle, (Img.CREATED,))
    if obj is None:
        return _refuse(sk, vp, "skci", "skci.handle", NtStatus.INVALID_HANDLE, handle=handle)
    if count != read_field(vp, obj, Img.PAGE_COUNT):
        return _refuse(sk, vp, "skci", "skci.capture", NtStatus.INVALID_PARAMETER, count=count)
    pfns = _capture_pfn_list(sk, vp, list_pfn, count)
    if pfns is None:
        return _refuse(sk, vp, "skci", "skci.capture", NtStatus.INVALID_PARAMETER, pfn=list_pfn)
    if len(set(pfns)) != len(pfns) or any(
        state.state(vp, pfn) != PageState.UNVALIDATED or _kdp_protected(sk, vp, pfn) for pfn in pfns
    ):
        return _refuse(sk, vp, "hvci", "hvci.page-state", NtStatus.INVALID_PARAMETER)
    code_index = sorted(_image_code(vp, obj))
    code_pfns = [pfns[i] for i in code_index]
    # Lock before hashing: without W, VTL0 cannot change a page between its hash and its KX.
    default = unvalidated(sk, vp)
    if not apply(sk, vp, code_pfns, R, "lock"):
        apply(sk, vp, code_pfns, default, "unlock")
        return _refuse(sk, vp, "hvci", "hvci.slat", NtStatus.UNSUCCESSFUL)
    state.set_state(vp, code_pfns, PageState.LOCKED)
    bad = [
        pfns[i]
        for i in code_index
        if _digest(_read_page(sk, vp, pfns[i])) != _image_digest(sk, vp, obj, i)
    ]
    if bad:
        apply(sk, vp, code_pfns, default, "unlock")
        state.set_state(vp, code_pfns, PageState.UNVALIDATED)
        # The image is refused for good: only NT's cleanup (UNLOAD_DRIVER) may name it now.
        write_field(vp, obj, Img.STAGE, Img.REJECTED)
        return _refuse(
            sk,
            vp,
            "skci",
            "skci.page-hash",
            NtStatus.INVALID_IMAGE_HASH,
            image=_image_name(vp, obj),
            mismatched=len(bad),
            first_gpa=bad[0] << PAGE_SHIFT,
        )
    for i in code_index:
        if not state.set_hash(vp, pfns[i], _image_digest(sk, vp, obj, i)):
            apply(sk, vp, code_pfns, default, "unlock")
            state.set_state(vp, code_pfns, PageState.UNVALIDATED)
            for j in code_index[: code_index.index(i)]:
                state.drop_hash(vp, pfns[j])
            write_field(vp, obj, Img.STAGE, Img.REJECTED)
            return _refuse(sk, vp, "hvci", "hvci.hash-records", NtStatus.NO_MEMORY)
    vp.write(obj + Img.PFNS, b"".join(pfn.to_bytes(8, "little") for pfn in pfns))
    write_field(vp, obj, Img.PFN_COUNT, len(pfns))
    write_field(vp, obj, Img.STAGE, Img.HASHED)
    sk.emit(
        vp,
        "skci",
        "skci.page-hash",
        "verified",
        image=_image_name(vp, obj),
        code_pages=len(code_pfns),
        handle=handle,
    )
    return Reply()


def load_driver(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    state = _enabled(sk, vp, Service.LOAD_DRIVER)
    if state is None:
        return Reply(NtStatus.NOT_SUPPORTED)
    handle = args.fields[0]
    obj = _image(sk, vp, handle, (Img.HASHED,))
    if obj is None:
        return _refuse(sk, vp, "hvci", "hvci.load-driver", NtStatus.INVALID_HANDLE, handle=handle)
    code = _image_code(vp, obj)
    pfns = _image_pfns(vp, obj)
    code_pfns = [pfns[i] for i in sorted(code)]
    data_pfns = [pfn for i, pfn in enumerate(pfns) if i not in code]
    if not apply(sk, vp, data_pfns, R | W, "load-driver:data") or not apply(
        sk, vp, code_pfns, R | KX | UX, "load-driver:code"
    ):
        return _refuse(sk, vp, "hvci", "hvci.slat", NtStatus.UNSUCCESSFUL, handle=handle)
    state.set_state(vp, data_pfns, PageState.IMAGE_DATA)
    state.set_state(vp, code_pfns, PageState.VALIDATED)
    write_field(vp, obj, Img.STAGE, Img.LOADED)
    sk.emit(
        vp,
        "hvci",
        "hvci.load-driver",
        "code-executable",
        image=_image_name(vp, obj),
        code_pages=len(code_pfns),
        data_pages=len(data_pfns),
        handle=handle,
    )
    return Reply()


def unload_driver(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    state = _enabled(sk, vp, Service.UNLOAD_DRIVER)
    if state is None:
        return Reply(NtStatus.NOT_SUPPORTED)
    handle = args.fields[0]
    obj = _image(sk, vp, handle, (Img.CREATED, Img.HASHED, Img.LOADED, Img.REJECTED))
    if obj is None:
        return _refuse(sk, vp, "hvci", "hvci.unload", NtStatus.INVALID_HANDLE, handle=handle)
    pfns = _image_pfns(vp, obj)
    if not apply(sk, vp, pfns, unvalidated(sk, vp), "unload-driver"):
        return _refuse(sk, vp, "hvci", "hvci.slat", NtStatus.UNSUCCESSFUL, handle=handle)
    state.set_state(vp, pfns, PageState.UNVALIDATED)
    for pfn in pfns:
        state.drop_hash(vp, pfn)
    name = _image_name(vp, obj)
    objects.close(sk, vp, handle)
    free_image(sk, vp, obj)
    sk.emit(vp, "hvci", "hvci.unload", "unvalidated", image=name, pages=len(pfns))
    return Reply()


# -- sanctioned transitions -----------------------------------------------------------------------
def make_protected_page_writable(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    state = _enabled(sk, vp, Service.MAKE_PROTECTED_PAGE_WRITABLE)
    if state is None:
        return Reply(NtStatus.NOT_SUPPORTED)
    pfn = args.fields[0]
    if not sk.vtl0_page(vp, pfn):
        return _refuse(sk, vp, "hvci", "hvci.page-state", NtStatus.INVALID_PARAMETER, pfn=pfn)
    current = state.state(vp, pfn)
    if current == PageState.WRITABLE:
        return Reply()
    if current != PageState.VALIDATED:
        return _refuse(
            sk,
            vp,
            "hvci",
            "hvci.page-state",
            NtStatus.INVALID_PARAMETER,
            gpa=pfn << PAGE_SHIFT,
            state=PageState(current).name,
        )
    if not apply(sk, vp, [pfn], unvalidated(sk, vp), "make-writable"):
        return _refuse(sk, vp, "hvci", "hvci.slat", NtStatus.UNSUCCESSFUL, pfn=pfn)
    state.set_state(vp, [pfn], PageState.WRITABLE)
    sk.emit(vp, "hvci", "hvci.transition", "writable", gpa=pfn << PAGE_SHIFT, kx=False)
    return Reply()


def make_protected_page_executable(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    state = _enabled(sk, vp, Service.MAKE_PROTECTED_PAGE_EXECUTABLE)
    if state is None:
        return Reply(NtStatus.NOT_SUPPORTED)
    pfn, requested = args.fields[0], args.fields[1] or (R | KX | UX)
    if requested & ~(R | W | KX | UX) or not requested & KX:
        return _refuse(
            sk, vp, "hvci", "hvci.request", NtStatus.INVALID_PARAMETER, requested=requested
        )
    if requested & W:
        return _refuse(
            sk,
            vp,
            "hvci",
            "hvci.w^x",
            NtStatus.INVALID_PAGE_PROTECTION,
            gpa=pfn << PAGE_SHIFT,
            requested=describe(requested),
        )
    if not sk.vtl0_page(vp, pfn):
        return _refuse(sk, vp, "hvci", "hvci.page-state", NtStatus.INVALID_PARAMETER, pfn=pfn)
    current = state.state(vp, pfn)
    if current == PageState.VALIDATED:
        return Reply()
    if current != PageState.WRITABLE:
        return _refuse(
            sk,
            vp,
            "skci",
            "skci.page-hash",
            NtStatus.INVALID_IMAGE_HASH,
            gpa=pfn << PAGE_SHIFT,
            state=PageState(current).name,
            reason="no signed hash covers this page",
        )
    if not apply(sk, vp, [pfn], R, "lock"):
        return _refuse(sk, vp, "hvci", "hvci.slat", NtStatus.UNSUCCESSFUL, pfn=pfn)
    if _digest(_read_page(sk, vp, pfn)) != state.hash_of(vp, pfn):
        apply(sk, vp, [pfn], unvalidated(sk, vp), "unlock")
        return _refuse(
            sk,
            vp,
            "skci",
            "skci.page-hash",
            NtStatus.INVALID_IMAGE_HASH,
            gpa=pfn << PAGE_SHIFT,
            reason="contents differ from the validated hash",
        )
    if not apply(sk, vp, [pfn], R | KX | UX, "make-executable"):
        apply(sk, vp, [pfn], unvalidated(sk, vp), "unlock")
        return _refuse(sk, vp, "hvci", "hvci.slat", NtStatus.UNSUCCESSFUL, pfn=pfn)
    state.set_state(vp, [pfn], PageState.VALIDATED)
    sk.emit(vp, "hvci", "hvci.transition", "executable", gpa=pfn << PAGE_SHIFT, kx=True)
    return Reply()


def allocate(sk: SecureKernel) -> None:
    """Loader: HVCI's tables in SK data pages.  The hash records come first, so that they sit
    right behind the secure-allocation arena (``allocation.register`` maps it just before)."""
    loader = sk.loader
    assert loader is not None
    pages = sk.loader_ram_pages
    hashes_va, hashes_gpa = sk.builder().alloc_data(L.Hvci.HASH_PAGES, contiguous=True)
    table = L.table_pages(pages)
    states_va, states_gpa = sk.builder().alloc_data(table, contiguous=True)
    rights_va, rights_gpa = sk.builder().alloc_data(table, contiguous=True)
    loader.write(rights_gpa, bytes([0xF]) * pages)  # 0xF: never set (the hypervisor's default)
    capacity = L.Hvci.HASH_CAPACITY
    loader.write(hashes_gpa + capacity.offset, L.Hvci.HASH_MAX.to_bytes(capacity.size, "little"))
    # SKCI's anchor record, as skci.dll's data ships it (the model root's public certificate,
    # as Microsoft's roots are compiled into skci.dll; vbsim.image.anchors).
    ci_va, ci_gpa = sk.builder().alloc_data(1)
    loader.write(ci_gpa, skci_image_data())
    sk.hvci = Hvci(
        states_va, states_gpa, rights_va, rights_gpa, hashes_va, hashes_gpa, pages, ci_va, ci_gpa
    )


def skci_image_data() -> bytes:
    """SKCI's anchor record as the image carries it (an image constant: SKCI decides from the
    copy in SK memory)."""
    from vbsim.image import model_pki

    return anchors.model_record(model_pki().root_der, (ImageKind.DRIVER, ImageKind.TRUSTLET))


def anchor(sk: SecureKernel, vp: Mem, kind: ImageKind) -> anchors.Anchor:
    """SKCI's trusted root and ``kind``'s requirement, as SK memory holds them now."""
    return anchors.read(vp, sk.hvci.ci_va, kind)


def register(sk: SecureKernel) -> None:
    allocate(sk)
    sk.handlers[Service.CREATE_SECURE_IMAGE] = create_secure_image
    sk.handlers[Service.FINISH_SECURE_IMAGE_VALIDATION] = finish_secure_image_validation
    sk.handlers[Service.LOAD_DRIVER] = load_driver
    sk.handlers[Service.UNLOAD_DRIVER] = unload_driver
    sk.handlers[Service.MAKE_PROTECTED_PAGE_WRITABLE] = make_protected_page_writable
    sk.handlers[Service.MAKE_PROTECTED_PAGE_EXECUTABLE] = make_protected_page_executable
    # HVCI's initial SLAT is the baseline: it runs first, so that later modules' phase-1 hooks
    # (KDP read-only pages, ...) refine it instead of being overwritten by it.
    sk.phase1_hooks.insert(0, phase1)
