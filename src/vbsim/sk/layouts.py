"""The Secure Kernel's structures in VTL1 memory: offsets, sizes, sources (numbers only).

In the spirit of :mod:`vbsim.hv.defs`: this module holds layouts and the smallest accessors over
them, no behaviour.  The SK reads every value it decides from through its own CPU (its paging
over VTL1's SLAT, usually at a VA in its data region) at the moment of the decision; host-side
tools (the invariant monitor, the report, the CLI, tests standing outside the machine) read the
same bytes from guest RAM with the ``host_*`` readers at the end.

Sources.  The public record describes *what* the SK keeps (vbs-internals §2.3 the handle table
and SKPROCESS / SECURE_IMAGE objects, §2.4 the per-build service table, §3.1-3.2 ``.tPolicy`` and
the trustlet IDs, §4.1 the IUM system-call filter, §5.1 HVCI's per-page state "one byte per GPA
page", Appendix A item 5), but not byte layouts: every layout below is **the model's invention**
unless its comment names a source.  Field widths follow what the value needs.

What lives here (VTL1 memory, read by the SK at each decision): the configuration block the
loader copies from the boot policy (``Config``), the phase, READY bits, the secure-allocation
arena's top and HyperGuard's trusted register values (``State``), the capture pages' control
word (``Capture``), the own-page bitmap, the frame pool's bitmap (``Pool``), the trustlet
allow-list (``AllowList``), the IUM system-call filter (``IumFilter``), the secure-call
dispatch table (``Dispatch``), HVCI's page-state and rights tables and validated-hash records
(``Hvci``), KDP's owner table (``Kdp``; the secure-pool block records are ``POOL_RECORD`` in
``sk.services.kdp``), the handle table (``HandleTable``) and the objects it points to
(``SecureImage``, ``SecureAllocation``, ``SecurePool``, ``SkProcess`` with its mailbox
directory), the small-object pool (``ObjectPool``) and the secure threads (``SecureThread``,
``ThreadTable``).

The SK processor block (``Prcb``) names each VP's current trustlet and secure thread.

Moved into SK memory by issue 10's second pass (they were Python attributes): the secure-storage
records (``Storage``; was ``SecureKernel.storage``), the SkuSiPolicy floors (``Revocation``,
copied by the loader as the configuration is, read by SKCI at each admission through
``sk.sipolicy``; was ``SecureKernel.revocation``), the intercept log (``InterceptLog``; was
``SecureKernel.intercepts``), HVPT's records (``HvptRecords``: the HLAT root, the VPs it
enabled and the pinned ranges; whether a page is pinned is read from the HLAT tables
themselves; were ``HvptState.pinned`` / ``ranges`` / ``enabled``), and the secure process's
address space and frames (``SkProcess.DIRECTORY_TABLE_BASE``, the image PFNs and secure
sections in the SKPROCESS page, the private and page-table PFNs in its ``FrameList`` page;
the probe cache of earlier walks moved into the SKPROCESS page, ``SkProcess.PROBE_CACHE``).

What stays in Python, and why (symbol-table data, no value a decision reads): the parsed
trustlet image and its routine VAs (``sk.ium.process.SecureProcess``, derived once from the
signed bytes SKCI verified); the root a trustlet's tables were built at and HVPT's HLAT root
and table frames as host-tool conveniences (the SK itself reads both from SK memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from vbsim.hw.x86 import PAGE_SIZE
from vbsim.layout import Mem as Mem
from vbsim.layout import read_field as read_field
from vbsim.layout import write_field as write_field


class _Ram(Protocol):
    """What a host-side reader needs of guest RAM (``vbsim.hw.ram.GuestRam`` has it)."""

    def read(self, gpa: int, length: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a structure: byte offset, size in bytes, and where the layout comes from."""

    name: str
    offset: int
    size: int
    source: str = "model"


MODEL = "model (no public layout)"


# -- SK configuration block (one page; the loader copies it from the boot policy) ----------------
# vbs-internals §1.1 rows 3 and 11: winload reads the VBS policy and hands it to the SK in the
# OslVsmLoaderBlock; the block's layout is not public.
class Config:
    HVCI = Field("hvci", 0x00, 1, MODEL)
    KDP = Field("kdp", 0x01, 1, MODEL)
    HVPT = Field("hvpt", 0x02, 1, MODEL)
    MBEC = Field("mbec", 0x03, 1, MODEL)
    CREDENTIAL_GUARD = Field("credential_guard", 0x04, 1, MODEL)
    #: The build whose secure-service numbers the SK uses ('A' or 'B', vbs-internals §2.4).
    BUILD = Field("build", 0x05, 1, MODEL)
    #: Legacy switches (vbs-internals §6 A8, A9): historical SK bugs, reproduced on request.
    LEGACY_UNCHECKED = Field("legacy_unchecked_securecall_params", 0x06, 1, MODEL)
    LEGACY_DOUBLE_FETCH = Field("legacy_securecall_double_fetch", 0x07, 1, MODEL)
    VPS = Field("vps", 0x08, 4, MODEL)
    RAM_PAGES = Field("ram_pages", 0x0C, 4, MODEL)
    #: DefaultVtlProtectionMask the SK chose for VTL0 (vsm-spec §3.4).
    VTL0_DEFAULT_MASK = Field("vtl0_default_mask", 0x10, 1, MODEL)
    #: HyperGuard runs (policy.hyperguard; vbs-internals §5.7).
    HYPERGUARD = Field("hyperguard", 0x11, 1, MODEL)
    #: The frame pool the loader reserved for the SK (first PFN, page count): the only frames
    #: it allocates from at run time.
    POOL_BASE = Field("pool_base", 0x14, 4, MODEL)
    POOL_COUNT = Field("pool_count", 0x18, 4, MODEL)
    SIZE = 0x20


# -- SK state block: boot phase and the trusted register values of PHASE3 ------------------------
class Phase:
    """Phase codes (the model's numbering of vbs-internals §1.1 rows 12-14)."""

    LOADED = 0
    PHASE1 = 1
    PHASE3 = 3
    PHASE4 = 4


class State:
    PHASE = Field("phase", 0x00, 4, MODEL)
    #: How many trusted VTL0 register values HyperGuard recorded at PHASE3 (vbs-internals §5.7).
    TRUSTED_COUNT = Field("trusted_count", 0x04, 4, MODEL)
    #: Per VP, whether its VTL1 is initialised (bit n: VP n).
    READY = Field("ready", 0x08, 8, MODEL)
    #: The secure-allocation arena's top: buffers are carved downward from here
    #: (``sk.services.allocation``; 0: the arena is untouched, its end).
    ARENA_TOP = Field("arena_top", 0x10, 8, MODEL)
    #: The CMOS clock's time when the SK initialised (FILETIME, ``vbsim.guest.rtc``), read by
    #: the SK itself before NT ran: the time SKCI judges certificate validity at.
    BOOT_TIME = Field("boot_time", 0x18, 8, MODEL)
    TRUSTED = 0x20
    #: Trusted entry: HV_REGISTER_NAME (u32, vsm-spec §4), pad, value (HV_REGISTER_VALUE, 128
    #: bits: segment and table registers need more than 64).
    TRUSTED_NAME = Field("name", 0x00, 4, MODEL)
    TRUSTED_VALUE = Field("value", 0x08, 16, "vsm-spec §4 (HV_REGISTER_VALUE is 128 bits)")
    TRUSTED_ENTRY = 0x18
    TRUSTED_MAX = (PAGE_SIZE - TRUSTED) // TRUSTED_ENTRY


class Capture:
    """The secure-call capture pages' control page (``sk.services.allocation``): which pages a
    call holds now.  A call holds one across its normal calls, so the page is the SK's scratch
    (model)."""

    BUSY = Field("busy", 0x00, 4, MODEL)  # bit n: capture slot n is held


# -- the trustlet allow-list ----------------------------------------------------------------------
class AllowList:
    """Trustlet IDs SKCI admits (vbs-internals §3.2 lists the known IDs; the array is the
    model's), and in the page's second half the capabilities the SK grants by trustlet ID
    whatever the signed policy says (Ionescu 2015 shows ``SkCapabilities`` entries such as
    SecureStorageGet/Put allowed by trustlet ID; vbs-internals §4 "needs Capability policy, or
    an SK by-ID allow-list").  Grant entry: u32 trustlet ID, u32 capability bits."""

    COUNT = Field("count", 0x00, 4, MODEL)
    IDS = 0x08  # u32 per ID
    ID_SIZE = 4
    GRANTS = 0x800
    GRANT_COUNT = Field("grant_count", GRANTS, 4, MODEL)
    GRANT_ENTRIES = GRANTS + 0x08
    GRANT_SIZE = 8
    MAX = (GRANTS - IDS) // ID_SIZE
    GRANT_MAX = (PAGE_SIZE - GRANT_ENTRIES) // GRANT_SIZE


# -- the IUM system-call filter -------------------------------------------------------------------
class IumFilter:
    """Two bitmaps over NT service numbers (vbs-internals §4.1: each NT service is disabled,
    forwarded to NT, or special in the SK).  A number in neither bitmap is disabled."""

    NUMBERS = 4096  # NT service numbers the bitmaps cover (the model's NT numbers are below)
    FORWARDED = 0x000  # bit n set: service n is forwarded to NT (IumGenericSyscall)
    SPECIAL = NUMBERS // 8  # bit n set: service n is implemented in the SK
    SIZE = 2 * (NUMBERS // 8)


# -- the IUM service tables ----------------------------------------------------------------------
class IumServiceTable:
    """The SK's two IUM system-service tables in one data page (vbs-internals §4.1-§4.2: the
    secure services IumXxx, and the NT services the SK implements itself, "special").  Secure
    services are indexed by their number (``ium_abi.SECURE_SYSCALLS``); the special ones are
    records {u32 NT service number, u32 reserved, u64 routine VA} (the model's layout: the real
    table's is not public).  A VA of 0, or no record, is a service the SK does not implement."""

    SECURE = 0x000
    SECURE_ENTRIES = 0x100
    ENTRY = 8
    SPECIAL_COUNT = Field("special_count", 0x800, 4, MODEL)
    SPECIAL = 0x808
    SPECIAL_RECORD = 16
    SPECIAL_MAX = (PAGE_SIZE - SPECIAL) // SPECIAL_RECORD


# -- the secure-call dispatch table ---------------------------------------------------------------
class Dispatch:
    """Per SSCN (vbs-internals §2.4, the selected build's numbers) the VA of the handler routine
    in SK code; 0 for a number the SK does not know (it bugchecks, vbs-internals §2.2 step 6)."""

    ENTRIES = 2048  # SSCNs 0..2047 (the highest known is BUGCHECK, 1792)
    ENTRY = 8
    SIZE = ENTRIES * ENTRY


# -- KDP ----------------------------------------------------------------------------------------
class Kdp:
    """KDP's protected ranges (vbs-internals §5.2): one byte per GPA page naming its owner —
    static KDP (MmProtectDriverSection) or the secure pool.  The table is the model's layout;
    the secure pool's block records (tag, cookie) are ``POOL_RECORD`` in ``sk.services.kdp``."""

    NONE = 0
    STATIC = 1
    POOL = 2
    #: Not KDP's own: the kernel CFG bitmap (``sk.services.kcfg``) is read-only to VTL0 the same
    #: way, and every service that respects KDP's pages must respect it too.
    KCFG = 3


class KernelCfg:
    """[model] kCFG's record in an SK data page (``sk.services.kcfg``): what INITIALIZE_KERNEL_CFG
    registered — the VTL0 VAs of NT's control page (``guard_icall_bitmap``) and of the bitmap
    that follows it, and the GPA page of each, control page first — and whether PHASE3_INIT has
    made them read-only.  The SK sets bits (ENABLE_CFG_TARGET) through these GPAs, never through
    a translation VTL0 could change afterwards."""

    STATE = Field("state", 0x00, 4, MODEL)
    PAGES = Field("pages", 0x04, 4, MODEL)
    CONTROL_VA = Field("control_va", 0x08, 8, MODEL)
    BITMAP_VA = Field("bitmap_va", 0x10, 8, MODEL)
    GPNS = 0x20  # u64 GPA page number per page, control page first
    MAX_PAGES = (PAGE_SIZE - GPNS) // 8
    # States
    NONE = 0
    REGISTERED = 1
    PROTECTED = 2


# -- secure process objects (SKPROCESS) -----------------------------------------------------------
class SkProcess:
    """The SK's secure process object, one SK page each (vbs-internals §3.3, §3.5: SKPROCESS
    holds the trustlet's identity — ID, the policy's debug and capability values, the instance
    number — and the mailbox key; its layout is not public: model).  The mailbox directory
    names, per slot, the SK frame holding the posted bytes (secrets, vbs-internals §4.4)."""

    TRUSTLET_ID = Field("trustlet_id", 0x00, 8, MODEL)
    MAILBOX_KEY = Field("mailbox_key", 0x08, 8, MODEL)
    DEBUG = Field("debug", 0x10, 4, "vbs-internals §3.1 policy ID 2 (value: model width)")
    CAPABILITIES = Field("capabilities", 0x14, 4, "vbs-internals §3.1 policy capability")
    CRASH_DUMP = Field("crash_dump", 0x18, 4, "vbs-internals §3.1 policy crash dump")
    SVN = Field("svn", 0x1C, 4, "vbs-internals §3.1 s_IumPolicyMetadata SVN")
    INSTANCE = Field("instance", 0x20, 16, "vbs-internals §3.3 (16-byte instance number)")
    #: Set by RUNDOWN_PROCESS or a trustlet's own exit: no thread of it runs again.
    TERMINATED = Field("terminated", 0x30, 4, MODEL)
    #: The secure process handle (EPROCESS.Pcb.SecurePid on the NT side, vbs-internals §2.3).
    HANDLE = Field("handle", 0x38, 8, "vbs-internals §2.3 (value); offset: model")
    MAILBOXES = 0x40
    MAILBOX_PFN = Field("pfn", 0x00, 8, MODEL)
    MAILBOX_LENGTH = Field("length", 0x08, 4, MODEL)
    MAILBOX_ENTRY = 0x10
    MAILBOX_SLOTS = 8
    #: The trustlet's PML4 (KPROCESS.DirectoryTableBase, Vergilius Project _KPROCESS; offset:
    #: model): what the SK loads into CR3 to run it and walks to probe its pointers.
    DIRECTORY_TABLE_BASE = Field("DirectoryTableBase", 0xC0, 8, "Vergilius _KPROCESS (name)")
    #: The PFN of the process's frame-list page (``FrameList``), an SK pool frame.
    FRAME_LIST = Field("frame_list", 0xC8, 8, MODEL)
    IMAGE_COUNT = Field("image_count", 0xD0, 4, MODEL)
    PRIVATE_COUNT = Field("private_count", 0xD4, 4, MODEL)
    TABLE_COUNT = Field("table_count", 0xD8, 4, MODEL)
    SECTION_COUNT = Field("section_count", 0xDC, 4, MODEL)
    #: Secure sections the trustlet shares with VTL0 (vbs-internals §4.4): VA, page count, PFNs.
    SECTIONS = 0x100
    SECTION_VA = Field("va", 0x00, 8, MODEL)
    SECTION_PAGES = Field("pages", 0x08, 4, MODEL)
    SECTION_PFNS = 0x10
    SECTION_MAX_PAGES = 16
    SECTION = SECTION_PFNS + 8 * SECTION_MAX_PAGES
    SECTION_SLOTS = 8
    #: The SK's probe cache (what a TLB holds of its own walks): ``PROBE_SLOTS`` u64 entries,
    #: slot ``vpn % PROBE_SLOTS`` holding ``vpn << 2 | PROBE_READ | PROBE_WRITE`` for a user page
    #: a probe found present and user (and writable) in the tables; 0: empty.  The SK zeroes it
    #: whenever it edits the tables, as it would invlpg (model).
    PROBE_CACHE = 0x580
    PROBE_SLOTS = 8
    PROBE_READ = 1
    PROBE_WRITE = 2
    #: The image section's PFNs (NT's pages, VTL0-read-only), in order; u64 each.
    IMAGE_PFNS = 0x800
    IMAGE_MAX = (PAGE_SIZE - IMAGE_PFNS) // 8


class FrameList:
    """A secure process's second page (``SkProcess.FRAME_LIST``): the PFNs of its private
    pages (taken from VTL0) and of its page-table frames (from the SK's pool), u64 each, counts
    in the SKPROCESS page (model)."""

    PRIVATE = 0x000
    TABLES = 0x800
    MAX = 0x800 // 8


# -- the secure handle table and the objects it points to ----------------------------------------
class ObjectType:
    """The type index a handle-table entry carries (vbs-internals §2.3 names SKPROCESS,
    SECURE_IMAGE and secure allocations as handle-table objects; the numbering is the model's,
    like NT's ObTypeIndexTable index, Windows Internals 7th ed. Part 2 ch. 8 "Object types")."""

    NONE = 0
    SKPROCESS = 1
    SECURE_IMAGE = 2
    SECURE_ALLOCATION = 3
    SECURE_POOL = 4
    LIVEDUMP = 5
    NAMES: ClassVar[dict[int, str]] = {
        SKPROCESS: "skprocess",
        SECURE_IMAGE: "secure_image",
        SECURE_ALLOCATION: "secure_allocation",
        SECURE_POOL: "secure_pool",
        LIVEDUMP: "livedump",
    }


class LiveDump:
    """A live-dump context (``sk.services.livedump``): one small-object pool block.  The real
    layout is not public (model): a header, then the buffers NT added, each the MDL's StartVa,
    ByteCount and ByteOffset as the SK recorded them."""

    COUNT = Field("buffer_count", 0x00, 4, MODEL)
    BUFFERS = 0x10
    ENTRY = 0x10
    START_VA = Field("StartVa", 0x00, 8, MODEL)  # within an entry
    BYTE_COUNT = Field("ByteCount", 0x08, 4, MODEL)
    BYTE_OFFSET = Field("ByteOffset", 0x0C, 4, MODEL)
    #: The entries that fit the block (ObjectPool.BLOCK bytes).
    SLOTS = (0x40 - BUFFERS) // ENTRY


class HandleTable:
    """The SK's handle table (SkobReferenceObjectByHandle reads it): an array of entries, each
    the object's VA (in the SK direct map or data region) and its type index.  A handle value is
    ``FIRST_HANDLE + (index << 2)`` — NT's encoding, the handle is the entry index times four
    with the low two bits free for tags (Windows Internals 7th ed. Part 2 ch. 8 "Object handles
    and the process handle table"; the base 0x1_4000_0000 is vbs-internals §2.3).  NT's x64
    HANDLE_TABLE_ENTRY packs pointer and access into 16 bytes; the model keeps the pointer whole
    and the type index beside it (model).  Entry 0 is "Secure System" and never handed out."""

    #: The entry index the next allocation tries first (allocation scans on from it, wrapping).
    HINT = Field("hint", 0x00, 4, MODEL)
    #: Live entries (each SKPROCESS / SECURE_IMAGE / allocation / pool is one).
    COUNT = Field("count", 0x04, 4, MODEL)
    #: One past the highest entry ever allocated: NT's HANDLE_TABLE.NextHandleNeedingPool, above
    #: which ExpLookupHandleTableEntry finds nothing (Windows Internals 7th ed. Part 2 ch. 8;
    #: Vergilius _HANDLE_TABLE).  Lookups and enumerations stop there.
    HIGH_WATER = Field("high water", 0x08, 4, "Vergilius _HANDLE_TABLE (NextHandleNeedingPool)")
    ENTRIES = 0x10
    OBJECT = Field("object", 0x00, 8, MODEL)
    TYPE = Field("type", 0x08, 4, MODEL)
    ENTRY = 0x10
    PAGES = 4
    MAX = (PAGES * PAGE_SIZE - ENTRIES) // ENTRY
    #: The SK's first handle value (vbs-internals §2.3: handles around 0x1_4000_0000).
    FIRST_HANDLE = 0x1_4000_0000


class ObjectPool:
    """The SK's small-object pool: ``PAGES`` SK data pages cut into ``BLOCK``-byte blocks, block
    0 holding the in-use bitmap (bit n: block n taken).  Secure allocations, secure-pool objects
    and secure threads live here; SKPROCESS and SECURE_IMAGE bodies take whole SK frames.
    The real SK's pool (SkAllocatePool) is not public: model."""

    BLOCK = 0x40
    PAGES = 4
    BLOCKS = PAGES * PAGE_SIZE // BLOCK
    BITMAP = 0x00


class SecureAllocation:
    """A CREATE_SECURE_ALLOCATION object (vbs-internals §2.3): the buffer in SK memory."""

    VA = Field("va", 0x00, 8, MODEL)
    SIZE = Field("size", 0x08, 8, "vbs-internals §2.3 (Field1 of CREATE_SECURE_ALLOCATION)")
    PAGES = Field("pages", 0x10, 4, MODEL)


class SecurePool:
    """An INITIALIZE_SECURE_POOL object (vbs-internals §5.2, dynamic KDP): the VTL0 range the
    pool occupies and where the next block is carved (the block records with tags and cookies
    are ``sk.services.kdp.POOL_RECORD``)."""

    BASE_PFN = Field("base_pfn", 0x00, 8, MODEL)
    VA = Field("va", 0x08, 8, MODEL)
    PAGES = Field("pages", 0x10, 4, MODEL)
    NEXT = Field("next", 0x14, 4, MODEL)


class SecureImage:
    """A CREATE_SECURE_IMAGE object (vbs-internals §2.3 SECURE_IMAGE, §5.1): the layout SKCI
    captured — page count, which pages hold code, each page's SHA-256 as the signed image lays
    it out — and, from FINISH_SECURE_IMAGE_VALIDATION on, the PFNs NT mapped it in.  One SK frame
    plus ``DIGEST_FRAMES`` frames of digests (128 per frame).  Layout: model."""

    STAGE = Field("stage", 0x00, 4, MODEL)
    PAGE_COUNT = Field("page_count", 0x04, 4, MODEL)
    PFN_COUNT = Field("pfn_count", 0x08, 4, MODEL)
    NAME = Field("name", 0x10, 32, MODEL)  # ASCII, NUL-padded
    CODE = 0x30  # bitmap over page indices (MAX_PAGES bits): 1 = code page
    DIGEST_FRAME = 0x50  # PFN (u64) of each digest frame
    DIGEST_FRAMES = 2
    PFNS = 0x800  # u64 per mapped page, in RVA order
    MAX_PAGES = 256
    DIGEST = 32  # SHA-256 (FIPS 180-4)
    DIGESTS_PER_FRAME = PAGE_SIZE // DIGEST
    # Stages (0: a freed body)
    CREATED = 1
    HASHED = 2
    LOADED = 3
    #: FINISH refused the mapped pages; only UNLOAD_DRIVER (NT's cleanup) may name it now.
    REJECTED = 4


class SecureThread:
    """A secure thread (KTHREAD.SecureThreadCookie names it, vbs-internals §3.5): its cookie and
    the SKPROCESS it belongs to (model layout).  Whether it runs is the processor blocks'
    ``Prcb.CURRENT_THREAD``."""

    COOKIE = Field("cookie", 0x00, 8, "vbs-internals §3.5 (the cookie value); offset: model")
    PROCESS = Field("process", 0x08, 8, MODEL)  # SKPROCESS VA


class ThreadTable:
    """Cookie → secure thread object: cookie ``FIRST_COOKIE + n`` is entry n (model)."""

    COUNT = Field("count", 0x00, 4, MODEL)
    ENTRIES = 0x08
    ENTRY = 8
    MAX = (PAGE_SIZE - ENTRIES) // ENTRY
    #: Secure thread cookies (KTHREAD.SecureThreadCookie) start here (model choice).
    FIRST_COOKIE = 0x10


# -- the SK's frame pool -------------------------------------------------------------------------
class Prcb:
    """The SK's per-processor block, at GS base (one per VP, ``SIZE`` bytes apart).  Its public
    counterpart is the KPRCB's CurrentThread (Windows Internals 7th ed., ch. 4); the SK's own
    layout is not public (model)."""

    #: The SKPROCESS object (its VA in the SK direct map) of the trustlet this VP runs; 0: none.
    CURRENT_PROCESS = Field("CurrentProcess", 0x00, 8, MODEL)
    #: The secure thread object this VP runs (KPRCB.CurrentThread's counterpart); 0: none.  A
    #: thread some processor block names is running: RESUME_THREAD refuses it.
    CURRENT_THREAD = Field("CurrentThread", 0x08, 8, "Windows Internals 7th ed. ch. 4 (KPRCB)")
    SIZE = 0x40


class Pool:
    """Free bitmap over the contiguous range the boot loader reserved for the SK (bit n set:
    frame base + n in use).  The real SK's PFN database layout is not public (model)."""

    BITMAP = 0x00
    MAX = PAGE_SIZE * 8
    #: Frames the loader reserves (the model's choice: 4 MiB, enough for the trustlets' tables).
    FRAMES = 1024


# -- HVCI ---------------------------------------------------------------------------------------
class Hvci:
    """HVCI's page-identity knowledge (vbs-internals §5.1, Appendix A item 5).

    - the page-state table: one byte per GPA page (``PageState`` in ``sk.services.hvci``);
    - the rights table: one byte per GPA page, the VTL0 SLAT rights HVCI last set (0xF: never);
    - the validated-hash records: the SHA-256 of contents that earned KX, per page.  The records
      are an array searched by GPN (model layout); record 0 is the oldest."""

    HASH_COUNT = Field("count", 0x00, 4, MODEL)
    #: Records the array holds (the loader writes HASH_MAX; the SK never goes beyond either).
    HASH_CAPACITY = Field("capacity", 0x04, 4, MODEL)
    HASH_RECORDS = 0x10
    RECORD_GPN = Field("gpn", 0x00, 8, MODEL)
    RECORD_SHA256 = Field("sha256", 0x08, 32, "SHA-256 (FIPS 180-4)")
    RECORD_SIZE = 0x28
    HASH_PAGES = 8
    HASH_MAX = (HASH_PAGES * PAGE_SIZE - HASH_RECORDS) // RECORD_SIZE
    NO_GPN = 0xFFFF_FFFF_FFFF_FFFF  # a free record


# -- secure storage (IumSecureStoragePut/Get, vbs-internals §4.3) -------------------------------
class Storage:
    """Which VTL1 frame holds each secure-storage item: one record per (trustlet ID, key), in an
    SK data page searched in order (a free record has trustlet ID ``FREE``).  The reference says
    secure storage exists per trustlet ID (§4.3) but not how the SK indexes it: model.  The item
    frame holds a u64 length and then the bytes (``sk.ium.secure_syscalls``)."""

    COUNT = Field("count", 0x00, 4, MODEL)  # records in use (the array is dense)
    RECORDS = 0x08
    TRUSTLET_ID = Field("trustlet_id", 0x00, 8, "vbs-internals §3.2 (value); offset: model")
    KEY = Field("key", 0x08, 8, MODEL)
    GPA = Field("gpa", 0x10, 8, MODEL)
    RECORD = 0x18
    MAX = (PAGE_SIZE - RECORDS) // RECORD


# -- revocation (SkuSiPolicy floors) --------------------------------------------------------------
class Revocation:
    """The revocation policy the loader hands the SK (vbs-internals §3.6 and §6 A15: SkuSiPolicy
    .p7b, read by winload and enforced by SKCI at trustlet admission), copied into one SK data
    page at load, as the boot policy is copied into ``Config``.  SKCI reads it at every
    admission.  The real SK keeps the parsed SI policy in structures that are not public: the
    layout is the model's; the values are the ones ``vbsim.image.RevocationPolicy`` carries.

    - component floors: NUL-padded ASCII file name, which limits are set, the minimum SVN and the
      minimum version as four u16 parts (VS_FIXEDFILEINFO's major.minor.build.revision,
      Microsoft Learn "VS_FIXEDFILEINFO structure");
    - revoked certificates and revoked images: SHA-256 values (FIPS 180-4), raw bytes."""

    COMPONENTS = Field("components", 0x00, 4, MODEL)
    CERTIFICATES = Field("certificates", 0x04, 4, MODEL)
    IMAGES = Field("images", 0x08, 4, MODEL)
    COMPONENT_BASE = 0x10
    NAME = Field("name", 0x00, 32, MODEL)
    FLAGS = Field("flags", 0x20, 4, MODEL)  # bit 0: a version floor, bit 1: an SVN floor
    MIN_SVN = Field("min_svn", 0x24, 4, "vbs-internals §3.1 (SVN is 32-bit)")
    MIN_VERSION = Field("min_version", 0x28, 8, "VS_FIXEDFILEINFO (4 x u16, major first)")
    COMPONENT = 0x30
    MAX_COMPONENTS = 16
    HAS_VERSION = 1
    HAS_SVN = 2
    CERTIFICATE_BASE = 0x400
    IMAGE_BASE = 0x600
    DIGEST = 32
    MAX_CERTIFICATES = (IMAGE_BASE - CERTIFICATE_BASE) // DIGEST
    MAX_IMAGES = (PAGE_SIZE - IMAGE_BASE) // DIGEST


# -- the intercept log (secure intercepts the SK refused, ``sk.intercepts``) --------------------
class InterceptLog:
    """Memory intercepts the SK handled (vsm-spec §6: HV_X64_MEMORY_INTERCEPT_MESSAGE's access
    type, GVA, GPA and the intercepted RIP), kept as a ring of fixed records in an SK data page:
    ``COUNT`` is how many were ever logged, record ``COUNT % MAX`` is written next.  Windows'
    own bookkeeping of refused intercepts is not public (model)."""

    COUNT = Field("count", 0x00, 8, MODEL)
    RECORDS = 0x10
    ACCESS = Field("access", 0x00, 4, "vsm-spec §6 (HV_INTERCEPT_ACCESS_TYPE)")
    VP = Field("vp", 0x04, 4, MODEL)
    GVA = Field("gva", 0x08, 8, "vsm-spec §6 (GuestVirtualAddress)")
    GPA = Field("gpa", 0x10, 8, "vsm-spec §6 (GuestPhysicalAddress)")
    RIP = Field("rip", 0x18, 8, "vsm-spec §6 (intercept header Rip)")
    RECORD = 0x20
    MAX = (PAGE_SIZE - RECORDS) // RECORD


# -- HVPT ---------------------------------------------------------------------------------------
class HvptRecords:
    """HVPT's bookkeeping (vbs-internals §5.6): the HLAT root, which VPs carry hvdef's
    ``hardware_hvpt_enabled`` for VTL0 (bit n: VP n, set by this SK), and a record per pinned
    range (first and end VA, a label for reports).  Whether a page is pinned is not recorded:
    the HLAT tables themselves say it (a leaf that is present and not "restart").  Layout:
    model."""

    ROOT = Field("root", 0x00, 8, "Intel SDM vol. 3C (HLATP: the HLAT PML4's address)")
    ENABLED = Field("enabled", 0x08, 8, MODEL)
    COUNT = Field("count", 0x10, 4, MODEL)  # range records ever written (the last MAX kept)
    RANGES = 0x20
    FIRST = Field("first", 0x00, 8, MODEL)
    END = Field("end", 0x08, 8, MODEL)
    LABEL = Field("label", 0x10, 16, MODEL)  # ASCII, NUL-padded
    RANGE = 0x20
    MAX = (PAGE_SIZE - RANGES) // RANGE


def table_pages(ram_pages: int) -> int:
    """Pages a one-byte-per-GPA table needs."""
    return -(-ram_pages // PAGE_SIZE)


# -- accessors over the SK's own CPU -------------------------------------------------------------
def bit(cpu: Mem, base: int, index: int) -> bool:
    """Bit ``index`` of a bitmap at VA ``base``."""
    return bool(cpu.read(base + (index >> 3), 1)[0] >> (index & 7) & 1)


# -- host-side readers (tools stand outside the machine and read RAM) ----------------------------
def host_field(ram: _Ram, gpa: int, field: Field) -> int:
    return int.from_bytes(ram.read(gpa + field.offset, field.size), "little")


def host_bit(ram: _Ram, gpa: int, index: int) -> bool:
    return bool(ram.read(gpa + (index >> 3), 1)[0] >> (index & 7) & 1)


def host_allow_list(ram: _Ram, gpa: int) -> list[int]:
    count = min(host_field(ram, gpa, AllowList.COUNT), AllowList.MAX)
    raw = ram.read(gpa + AllowList.IDS, count * AllowList.ID_SIZE)
    return [int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4)]


def host_hash_records(ram: _Ram, gpa: int) -> dict[int, bytes]:
    """GPN → validated SHA-256 (the first record for a GPN wins, as the SK's search does)."""
    count = min(host_field(ram, gpa, Hvci.HASH_COUNT), Hvci.HASH_MAX)
    raw = ram.read(gpa + Hvci.HASH_RECORDS, count * Hvci.RECORD_SIZE)
    out: dict[int, bytes] = {}
    for i in range(count):
        record = raw[i * Hvci.RECORD_SIZE : (i + 1) * Hvci.RECORD_SIZE]
        gpn = int.from_bytes(record[:8], "little")
        if gpn != Hvci.NO_GPN:
            out.setdefault(gpn, bytes(record[8:40]))
    return out
