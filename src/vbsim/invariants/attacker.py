"""A property-based attacker: random programs over the architectural actions of a capability.

A *program* is a capability (``U0``, ``A0``, ``K0`` or ``PHYS``, as in the attack catalogue) and a
list of :class:`Action` s.  An action names an operation and its arguments; arguments that depend
on the machine (a page of the Secure Kernel, a handle the SK returned, the attacker's own buffer)
are :class:`Ref` s resolved when the action runs, so a program replays on a freshly booted machine
(and a shrunk failing program can be kept in ``tests/invariants/regressions.py``).

What each capability can do (nothing else: the executor uses only the VP's instructions and the
kernel's own entry points, as the catalogue's :class:`~vbsim.attacks.context.AttackContext`):

- **K0** (VTL0 ring 0, stands for a kernel read/write primitive plus code reuse): read and write
  any virtual address (NT's direct map reaches every GPA, VTL1 pages included), edit the PTEs of
  a window of kernel VAs and touch through them (with or without INVLPG: stale TLB entries),
  write thunk bytes and call any address, issue any hypercall with any input value, parameter
  pages and XMM registers, make secure calls with any operation type, number, cookie and fields
  (foreign handles, VTL1 PFNs, huge lengths; MDLs and PFN lists staged in its pages; a
  time-of-check/time-of-use write while the SK waits in a normal call, no reply at all, or
  replies of its own making — NT answers the SK's normal calls, pages offered included),
  write MSRs and control registers, load tables, program a DMA device, load drivers through NT's
  loader, start trustlets from mutated images and resume their threads — including the
  attacker's own signed "fuzzlet", which stands for a bug in a signed trustlet and issues any
  system call (secure or NT) with any arguments from IUM.
- **U0 / A0** (VTL0 ring 3, standard user or administrator): system calls with any number and
  arguments, loads and stores at any address, privileged instructions (#UD/#GP), RWX user pages
  with any thunk, ALPC to LsaIso (A0: also from inside lsass), NtRead/Write/ProtectVirtualMemory
  on other processes, and the vulnerable signed driver's IOCTLs.
- **PHYS** (a hot-plugged bus master): DMA reads and writes at any IOVA.

Every :class:`Session` (a booted machine) starts with the attacker's footholds: loot and staging
pages in VTL0, a window of kernel VAs whose PTEs it edits, a U0 and an A0 process with its code
and a buffer (and, for A0, code inside lsass), a DMA device on the bus and a rogue external one,
and the fuzzlet and a vmsp instance running in IUM.

:func:`random_program` draws programs from a :class:`random.Random` (the soak); :func:`programs`
is the same generator as a Hypothesis strategy (shrinkable).
"""

from __future__ import annotations

import functools
import random
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from vbsim.boot.chain import System, boot
from vbsim.guest import hvcall
from vbsim.guest.address_space import CODE_BASE, DATA_BASE, DIRECT_MAP
from vbsim.hv.defs import HvCallCode, HvMsr
from vbsim.hw import code
from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.hw.dma import DEFAULT_BASE, DIR_FROM_MEMORY, DIR_TO_MEMORY, DmaDevice, driver_transfer
from vbsim.hw.faults import GuestTermination
from vbsim.hw.pagetable import PageTables
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, PTE_ADDR_MASK, Msr, Pte
from vbsim.invariants.monitor import Monitor
from vbsim.nt import secure_process
from vbsim.nt.pfn import host_next_fresh
from vbsim.nt.process import Process, Token, host_secure_thread_cookie
from vbsim.nt.syscalls import NUMBERS as NT_NUMBERS
from vbsim.nt.vsl import FIELDS_OFFSET, request_fields, write_answer
from vbsim.ntstatus import NtStatus
from vbsim.policy import Policy, preset
from vbsim.sk import callargs
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.ium import process as ium
from vbsim.sk.ium.syscalls import SECURE_NUMBERS
from vbsim.sk.kernel import FIRST_HANDLE
from vbsim.sk.sscn import Service
from vbsim.trace import Trace

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

    from vbsim.nt.kernel import NtKernel
    from vbsim.sk.kernel import SecureKernel

T = TypeVar("T")
CAPABILITIES = ("U0", "A0", "K0", "PHYS")
MASK64 = (1 << 64) - 1


class Ref(NamedTuple):
    """A machine-dependent argument, resolved when the action runs.

    ``space`` ``pfn``/``gpa``/``dm`` (direct-map VA) with a page ``pool``; or ``handle``,
    ``cookie``, ``window`` (the K0 PTE window), ``user`` (the process's buffer), ``kva`` (NT code or
    data), ``tva`` (an address inside a trustlet), ``pid``.  ``nth`` picks an element (modulo the
    pool's size; 0 is the newest handle or cookie), ``offset`` is added.
    """

    space: str
    pool: str = ""
    nth: int = 0
    offset: int = 0


Value = int | bytes | Ref | str


@dataclass(frozen=True)
class Action:
    op: str
    args: tuple[Any, ...] = ()

    def __repr__(self) -> str:
        return f"Action({self.op!r}, {self.args!r})"


@dataclass(frozen=True)
class Program:
    capability: str
    actions: tuple[Action, ...]

    def __repr__(self) -> str:
        body = "".join(f"\n        {a!r}," for a in self.actions)
        return f"Program(\n    {self.capability!r},\n    ({body}\n    ),\n)"


# -- value pools -----------------------------------------------------------------------------------
PFN_POOLS = (
    "loot",
    "stage",
    "nt",
    "ntpt",
    "ntcode",
    "free",
    "image",
    "hlat",
    "kdp",
    "sk",
    "vtl1",
    "trustlet",
    "edge",
)
EDGE_LENGTHS = (0, 1, 8, 0x30, 0xFFF, 0x1000, 0x1001, 0x2000, 1 << 20, 1 << 31, 1 << 32, MASK64)
EDGE_INTS = (0, 1, 2, 0xFFFF_FFFF, 1 << 32, 1 << 63, MASK64, 0x8000_0000_0000_0000 - 1)
WINDOW_VA = DATA_BASE + (400 << 30)
WINDOW_PAGES = 8
STAGE_PAGES = 4
LOOT_PAGES = 2
USER_BUFFER_PAGES = 4
MAILBOX_KEY = 0x5EC_12E7
FUZZLET = "fuzzlet.exe"
FUZZLET_ID = 3
#: A cap on what one action moves (a host-memory guard, not a model limit).
MAX_MOVE = 2 * PAGE_SIZE
MSRS = (
    int(Msr.LSTAR),
    int(Msr.STAR),
    int(Msr.SFMASK),
    int(Msr.EFER),
    int(Msr.CSTAR),
    int(Msr.SYSENTER_EIP),
    int(Msr.KERNEL_GS_BASE),
    int(HvMsr.HYPERCALL),
    int(HvMsr.GUEST_OS_ID),
    int(HvMsr.VP_ASSIST_PAGE),
    int(HvMsr.SIMP),
    int(HvMsr.SCONTROL),
    int(HvMsr.SINT0),
    int(HvMsr.EOM),
    0x4000_00FF,
    0xC000_0FFF,
)
ROUTINES = (
    "nt.KiSystemCall64",
    "nt.KiPageFault",
    "nt.KiUnexpectedTrap",
    "sk.entry",
    "sk.sint0",
    "sk.exception",
    "sk.KiSystemServiceStart",
    "lsaiso.main",
    "vmsp.main",
    "invariants.fuzzlet",
    "invariants.user",
)
#: The secure services' field types, one letter per field (the ABI, as syzkaller's descriptions
#: give a call's argument types; not where any bug is): h handle, c cookie, p PFN, v K0 VA,
#: n length/number, s small index, k key, r rights, x anything; M an MDL, two fields (its VA,
#: then the PFN of the page holding it: FILL_SECURE_ALLOCATION's Field3/Field4), aimed at a
#: staging page half of the time (where the attacker writes MDLs, see ``stage_mdl``).
SERVICE_SHAPES: dict[Service, str] = {
    Service.NULL: "",
    Service.CREATE_SECURE_ALLOCATION: "n",
    Service.FILL_SECURE_ALLOCATION: "hnM",
    Service.CREATE_PROCESS: "pnsk",
    Service.CREATE_THREAD: "h",
    Service.TERMINATE_THREAD: "c",
    Service.RUNDOWN_PROCESS: "h",
    Service.DEBUG_PROCESS: "h",
    Service.GET_CONTEXT: "c",
    Service.RETRIEVE_MAILBOX: "hskp",
    Service.IS_TRUSTLET_RUNNING: "s",
    Service.CREATE_SECURE_IMAGE: "npn",
    Service.FINISH_SECURE_IMAGE_VALIDATION: "hpn",
    Service.LOAD_DRIVER: "h",
    Service.UNLOAD_DRIVER: "h",
    Service.CLOSE_SECURE_HANDLE: "h",
    Service.MAKE_PROTECTED_PAGE_WRITABLE: "p",
    Service.MAKE_PROTECTED_PAGE_EXECUTABLE: "pr",
    Service.PROTECT_KERNEL_DATA_PAGE: "vnr",
    Service.REGISTER_PROTECTED_PAGE: "vnr",
    Service.INITIALIZE_SECURE_POOL: "pnv",
    Service.COPY_PROTECTED_PAGE: "hkvknnpnr",
    Service.PREPARE_FOR_CRASHDUMP: "spp",
    Service.PREPARE_FOR_HIBERNATION: "spp",
    Service.DEBUG_READ_WRITE_MEMORY: "hvpns",
    Service.START_PROCESSOR: "sp",
    Service.PHASE3_INIT: "",
    Service.PHASE4_INIT: "",
    Service.PERIODIC: "",
    Service.CREATE_SECURE_SECTION: "pn",
    # vbsim.sk.services.livedump: START takes nothing and makes a context; ADD_BUFFER takes
    # the context's handle, a slot and an MDL; ABORT frees the context
    Service.LIVEDUMP_START: "",
    Service.LIVEDUMP_ADD_BUFFER: "hsM",
    Service.LIVEDUMP_ABORT: "h",
    Service.OBTAIN_PATCH_UNDO_TABLE: "pn",
    Service.FINALIZE_SECURE_IMAGE_HASH: "h",
    # vbsim.sk.services.kcfg: the control page's and the bitmap's VAs and the page count; a
    # secure image's handle and a call target (a K0 VA)
    Service.INITIALIZE_KERNEL_CFG: "vvn",
    Service.ENABLE_CFG_TARGET: "hv",
}


#: A non-zero byte (an owned page in the KDP owner map).
_OWNED = re.compile(rb"[^\x00]")


# -- drawing ---------------------------------------------------------------------------------------
class Draw(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...

    def pick(self, options: Sequence[T]) -> T: ...

    def data(self, lo: int, hi: int) -> bytes: ...


class RandomDraw:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def data(self, lo: int, hi: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(lo, hi))


class HypothesisDraw:
    def __init__(self, draw: Callable[[SearchStrategy[Any]], Any]) -> None:
        from hypothesis import strategies as st

        self._draw = draw
        self._st = st

    def integer(self, lo: int, hi: int) -> int:
        value: int = self._draw(self._st.integers(lo, hi))
        return value

    def pick(self, options: Sequence[T]) -> T:
        value: T = self._draw(self._st.sampled_from(options))
        return value

    def data(self, lo: int, hi: int) -> bytes:
        value: bytes = self._draw(self._st.binary(min_size=lo, max_size=hi))
        return value


def _pfn_pool(d: Draw) -> str:
    # Own pages first (shrinking prefers them), then VTL0's, then the interesting ones.
    return d.pick(PFN_POOLS)


def _page_ref(d: Draw, space: str) -> Ref:
    offset = d.pick((0, 0, 0, 8, 0x30, 0xFF8, d.integer(0, PAGE_SIZE - 1)))
    return Ref(space, _pfn_pool(d), d.integer(0, 63), offset)


def _length(d: Draw, small: int = 64) -> int:
    return d.pick((d.integer(1, small), d.integer(0, MAX_MOVE), d.pick(EDGE_LENGTHS)))


def _raw(d: Draw) -> int:
    return d.pick((d.integer(0, 16), d.pick(EDGE_INTS), d.integer(0, MASK64)))


def _k0_va(d: Draw) -> Value:
    kind = d.integer(0, 5)
    if kind <= 2:
        return _page_ref(d, "dm")
    if kind == 3:
        return Ref("window", "", d.integer(0, WINDOW_PAGES - 1), d.integer(0, PAGE_SIZE - 1))
    if kind == 4:
        offset = d.pick((0, d.integer(0, PAGE_SIZE - 1)))
        return Ref("kva", d.pick(("data", "code")), d.integer(0, 7), offset)
    return _raw(d)


def _field(d: Draw, kind: str) -> Value:
    if d.integer(0, 4) == 0:  # any field may get any kind of value
        kind = d.pick("hpvncskr")
    if kind == "h":
        return Ref("handle", "", d.pick((0, 0, 1, d.integer(0, 15))))
    if kind == "c":
        return Ref("cookie", "", d.pick((0, 1, d.integer(0, 7))))
    if kind == "p":
        return _page_ref(d, "pfn")
    if kind == "v":
        return _k0_va(d)
    if kind == "n":
        return d.pick((d.integer(0, 4), _length(d, 0x2000)))
    if kind == "s":
        return d.integer(0, 8)
    if kind == "r":
        return d.pick((0, 0, 1, 5, 0xD, 0xF, 3, 7, d.integer(0, 255)))
    return _raw(d)


#: Where ``stage_mdl`` may write an MDL in a staging page.
MDL_AT = (0, 0x10, 0xFD0, 0xFF0)


def _mdl_fields(d: Draw) -> tuple[Value, Value]:
    """An MDL argument: a staged MDL's VA and PFN half of the time, else any VA and PFN (a VTL1
    page named as the MDL is an attack of its own)."""
    if d.integer(0, 1):
        slot = d.integer(0, STAGE_PAGES - 1)
        return Ref("dm", "stage", slot, d.pick(MDL_AT)), Ref("pfn", "stage", slot, 0)
    return _k0_va(d), _page_ref(d, "pfn")


def _tva(d: Draw) -> Value:
    kind = d.pick(("message", "reply", "heap", "private", "image", "sk", "vtl0", "raw"))
    if kind == "raw":
        return _raw(d)
    return Ref("tva", kind, d.integer(0, 7), d.pick((0, 8, 0x100, d.integer(0, 0xFFF))))


@dataclass(frozen=True)
class Focus:
    """Narrow the K0 attacker to some secure services (and the staging they need)."""

    services: tuple[Service, ...]
    ops: tuple[str, ...] = (
        "securecall",
        "securecall",
        "securecall",
        "stage_mdl",
        "stage_mdl",
        "stage_list",
    )


def _k0_action(d: Draw, focus: Focus | None = None) -> Action:
    op = d.pick(focus.ops if focus is not None else K0_OPS)
    if op == "read":
        return Action(op, (_k0_va(d), _length(d)))
    if op == "write":
        return Action(op, (_k0_va(d), d.data(1, 32)))
    if op == "pte":
        flags = d.pick((0x3, 0x1, 0x7, 0x8000_0000_0000_0003, 0x83, d.integer(0, 0xFFF)))
        return Action(
            op, (d.integer(0, WINDOW_PAGES - 1), _page_ref(d, "gpa"), flags, d.integer(0, 1))
        )
    if op == "touch":
        return Action(
            op, (d.integer(0, WINDOW_PAGES - 1), d.integer(0, PAGE_SIZE - 8), d.pick("rwx"))
        )
    if op == "hypercall":
        control = d.pick(
            (
                _control(d),
                _control(d),
                d.integer(0, MASK64),
            )
        )
        rdx = d.pick((Ref("gpa", "stage", 0), _page_ref(d, "gpa"), _raw(d)))
        r8 = d.pick((Ref("gpa", "stage", 1), _page_ref(d, "gpa"), _raw(d)))
        return Action(op, (control, rdx, r8, d.data(0, 64), d.data(0, 32)))
    if op == "securecall":
        return _securecall(d, focus.services if focus is not None else tuple(SERVICE_SHAPES))
    if op == "stage_mdl":
        pfns = tuple(_page_ref(d, "pfn") for _ in range(d.integer(0, 3)))
        return Action(
            op,
            (
                d.integer(0, STAGE_PAGES - 1),
                d.pick(MDL_AT),
                pfns,
                _length(d, 0x2000),
                d.pick((0, 8, 0xFF8, 0x1000, d.integer(0, 0xFFFF_FFFF))),
                d.pick((-1, 0, 0x30, 0x38, 0xFFFF)),
            ),
        )
    if op == "stage_list":
        pfns = tuple(_page_ref(d, "pfn") for _ in range(d.integer(0, 4)))
        return Action(op, (d.integer(0, STAGE_PAGES - 1), pfns))
    if op == "wrmsr":
        value = d.pick((_page_ref(d, "gpa"), _raw(d), 1))
        return Action(op, (d.pick(MSRS), value, d.integer(0, 1)))
    if op == "rdmsr":
        return Action(op, (d.pick(MSRS),))
    if op == "movcr":
        return Action(op, (d.pick((0, 3, 4, 8, 2)), _raw(d), d.integer(0, 1)))
    if op == "table":
        return Action(op, (d.pick(("idtr", "gdtr")), _k0_va(d), d.integer(0, 0xFFFF)))
    if op == "dma":
        return Action(op, (d.integer(0, 1), _page_ref(d, "gpa"), _length(d)))
    if op == "driver":
        return Action(op, (d.pick(DRIVERS),))
    if op == "trustlet":
        mutations = tuple(
            (d.integer(0, 0x1FFF), d.integer(1, 255)) for _ in range(d.pick((0, 0, 1, 2)))
        )
        return Action(
            op,
            (
                d.pick(("fuzzlet", "vmsp", "lsaiso")),
                mutations,
                d.pick((-1, -1, -1, 1, 2, 3, 4, 6, d.integer(0, 0xFFFF))),  # -1: its own ID
                d.pick((0, 0, 0, d.integer(1, 0x3000))),
                d.pick(((), tuple(_page_ref(d, "pfn") for _ in range(d.pick((1, 1, 2, 9)))))),
            ),
        )
    if op == "resume":
        return Action(op, (d.integer(0, 3), d.data(0, 48), d.pick((0, 0, 1, d.integer(0, 9)))))
    if op == "fuzzlet":
        number = d.pick(
            (
                d.pick(tuple(SECURE_NUMBERS.values())),
                d.pick(tuple(NT_NUMBERS.values())),
                _raw(d),
            )
        )
        args = tuple(d.pick((_tva(d), _length(d), _raw(d))) for _ in range(4))
        return Action(op, (d.integer(0, 3), number, args))
    if op == "thunk":
        return Action(op, (_k0_va(d), d.pick(ROUTINES)))
    if op == "call":
        return Action(op, (d.pick((Ref("window", "", d.integer(0, 7)), _k0_va(d))),))
    if op == "invlpg":
        return Action(op, (d.pick((Ref("window", "", d.integer(0, 7)), _k0_va(d))),))
    return Action(op)


def _control(d: Draw) -> int:
    code_ = d.pick(tuple(int(c) for c in HvCallCode))
    fast = d.integer(0, 1)
    rep_count = d.pick((0, 1, 2, d.integer(0, 0xFFF)))
    rep_start = d.pick((0, 0, 1, d.integer(0, 0xFFF)))
    return code_ | fast << 16 | rep_count << 32 | rep_start << 48


def _securecall(d: Draw, services: tuple[Service, ...]) -> Action:
    service = d.pick(services)
    op = d.pick(
        (callargs.OP_INVOKE_SERVICE,) * 12
        + (callargs.OP_NORMAL_REPLY, callargs.OP_RESUME_THREAD, callargs.OP_FLUSH_TB)
        + (d.integer(0, 255),)
    )
    code_: Value = service.value if d.integer(0, 31) else d.integer(0, 0xFFFF)
    shape = SERVICE_SHAPES[service]
    fields: tuple[Value, ...] = ()
    for kind in shape:
        fields += _mdl_fields(d) if kind == "M" else (_field(d, kind),)
    extra = d.integer(0, 2)
    fields += tuple(_field(d, "x") for _ in range(extra))
    cookie = d.pick((0, 0, Ref("cookie", "", d.integer(0, 7)), _raw(d)))
    toctou: tuple[Any, ...] = ()
    mode = d.pick(("reply", "reply", "toctou", "abandon", "hostile"))
    if mode == "toctou":
        toctou = ("toctou", _k0_va(d), d.data(1, 16))
    elif mode == "abandon":
        toctou = ("abandon",)
    elif mode == "hostile":  # NT answers the SK's normal calls with values of its choosing
        toctou = ("hostile", tuple(_field(d, d.pick("spn")) for _ in range(d.integer(1, 9))))
    return Action("securecall", (op, code_, cookie, fields, toctou))


#: K0 operations, weighted (a repeated entry is drawn more often); instant-death ones are rare.
_K0_WEIGHTS = {
    "securecall": 10,
    "fuzzlet": 8,
    "hypercall": 6,
    "read": 4,
    "write": 3,
    "stage_mdl": 3,
    "pte": 3,
    "touch": 3,
    "dma": 3,
    "resume": 3,
    "stage_list": 2,
    "wrmsr": 2,
    "driver": 2,
    "trustlet": 2,
    "thunk": 2,
    "rdmsr": 1,
    "movcr": 1,
    "table": 1,
    "call": 1,
    "invlpg": 1,
    "syscall0": 1,
}
K0_OPS = tuple(op for op, weight in _K0_WEIGHTS.items() for _ in range(weight))
DRIVERS = ("vbsim_sample.sys", "vbsim_vuln.sys", "vbsim_unsigned.sys", "vbsim_otherroot.sys")


def _user_action(d: Draw, admin: bool) -> Action:
    op = d.pick(USER_OPS_ADMIN if admin else USER_OPS)
    if op == "syscall":
        number = d.pick((d.pick(tuple(NT_NUMBERS)), d.pick(tuple(NT_NUMBERS.values())), _raw(d)))
        args = tuple(
            d.pick(
                (
                    Ref("user", "", 0, d.pick((0, 0x1000, 0x2000, d.integer(0, 0x3FF8)))),
                    d.integer(0, 64),
                    Ref("pid", d.pick(("self", "lsass", "lsaiso", "system")), 0),
                    _k0_va(d),
                    _raw(d),
                )
            )
            for _ in range(4)
        )
        return Action(op, (number, args))
    if op in ("uread", "uwrite"):
        va = d.pick((Ref("user", "", 0, d.integer(0, 0x3FF8)), _k0_va(d), _raw(d)))
        return Action(op, (va, d.data(1, 16)) if op == "uwrite" else (va, _length(d)))
    if op == "privileged":
        return Action(op, (d.pick(("vmcall", "wrmsr", "movcr", "lidt", "invlpg", "out")),))
    if op == "exec":
        return Action(op, (d.pick(ROUTINES), d.integer(0, 3)))
    if op == "alpc":
        return Action(op, (d.pick(("lsaiso", "vmsp")), _alpc_message(d), d.integer(0, 1)))
    if op in ("readvm", "writevm"):
        pid = Ref("pid", d.pick(("lsass", "lsaiso", "self", "system")), 0)
        address = d.pick((Ref("tva", "image", 0, d.integer(0, 0xFFF)), Ref("user", "", 0), _raw(d)))
        return Action(op, (pid, address, _length(d), d.data(1, 16)))
    if op == "protectvm":
        pid = Ref("pid", d.pick(("lsaiso", "lsass", "self")), 0)
        return Action(
            op, (pid, Ref("tva", "image", 0), d.pick((0x1000, 0x2000)), d.pick((2, 4, 0x20, 0x40)))
        )
    if op == "load_driver":
        return Action(op, (d.pick(DRIVERS),))
    if op == "ioctl":
        return Action(op, (d.pick((0x8000_2048, 0x8000_204C, 0)), _k0_va(d), _raw(d)))
    return Action(op)


def _alpc_message(d: Draw) -> bytes:
    kind = d.integer(0, 2)
    if kind == 0:  # PROTECT
        return (1).to_bytes(4, "little") + d.data(80, 80)
    if kind == 1:  # RESPOND
        blob = b"LSAISO\x01\x00" + d.data(0, 40)
        return (2).to_bytes(4, "little") + len(blob).to_bytes(4, "little") + blob + d.data(8, 8)
    return d.data(0, 48)


USER_OPS = (
    "syscall",
    "syscall",
    "syscall",
    "uread",
    "uwrite",
    "privileged",
    "exec",
    "readvm",
    "writevm",
    "protectvm",
)
USER_OPS_ADMIN = (*USER_OPS, "alpc", "alpc", "load_driver", "ioctl", "ioctl")


def _phys_action(d: Draw) -> Action:
    op = d.pick(("dma_read", "dma_write"))
    iova = d.pick((_page_ref(d, "gpa"), _raw(d)))
    if op == "dma_read":
        return Action(op, (iova, _length(d)))
    return Action(op, (iova, d.data(1, 64)))


def draw_action(d: Draw, capability: str, focus: Focus | None = None) -> Action:
    if capability == "K0":
        return _k0_action(d, focus)
    if capability in ("U0", "A0"):
        return _user_action(d, capability == "A0")
    return _phys_action(d)


def draw_program(d: Draw, capability: str, max_actions: int, focus: Focus | None = None) -> Program:
    count = d.integer(1, max_actions)
    return Program(capability, tuple(draw_action(d, capability, focus) for _ in range(count)))


def random_program(
    rng: random.Random,
    capability: str | None = None,
    max_actions: int = 50,
    focus: Focus | None = None,
) -> Program:
    d = RandomDraw(rng)
    return draw_program(d, capability or d.pick(CAPABILITIES), max_actions, focus)


def programs(
    capability: str, max_actions: int = 12, focus: Focus | None = None
) -> SearchStrategy[Program]:
    """The attacker as a Hypothesis strategy (programs shrink action by action)."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw: Callable[[SearchStrategy[Any]], Any]) -> Program:
        d = HypothesisDraw(draw)
        count: int = draw(st.integers(1, max_actions))
        actions = tuple(draw_action(d, capability, focus) for _ in range(count))
        return Program(capability, actions)

    result: SearchStrategy[Program] = build()
    return result


# -- guest code the attacker brings --------------------------------------------------------------
_FUZZLET_MESSAGE = struct.Struct("<5Q")


@guest_code("invariants.fuzzlet")
def _fuzzlet(vp: VirtualProcessor, message: int, length: int, reply: int) -> int:
    """The attacker's trustlet (a bug in a signed trustlet): one system call, any number and
    arguments, from VTL1 ring 3.  Only the status goes back (8 bytes)."""
    if length < _FUZZLET_MESSAGE.size:
        return 0
    number, a0, a1, a2, a3 = _FUZZLET_MESSAGE.unpack(vp.read(message, _FUZZLET_MESSAGE.size))
    vp.rax, vp.r10, vp.rdx, vp.r8, vp.r9 = number, a0, a1, a2, a3
    vp.syscall()
    vp.write(reply, (vp.rax & MASK64).to_bytes(8, "little"))
    return 8


#: The attacker's answer to the SK's "give me pages" (NORMAL_ALLOCATE_PAGES): planted in NT's code
#: pages (a debugger's plant, ``KernelSpace.install``: K0 stands for code reuse, which HVCI does
#: not stop) and reached the way NT reaches any normal-call routine, through the VA a K0 write put
#: in VslpNormalCallTable.  Its data is at a VA the attacker mapped for it (the address is in its
#: code, as shellcode carries one): see :data:`HOSTILE_DATA`.
HOSTILE_ALLOCATE = "invariants.hostile-allocate"
#: The hostile routine's data page: the honest routine's VA, how many PFNs are offered, how many
#: were handed out so far, then the offered PFNs (u64 each).
HOSTILE_DATA_VA = WINDOW_VA + 64 * PAGE_SIZE
_HOSTILE_HEADER = struct.Struct("<3Q")
HOSTILE_MAX = (PAGE_SIZE - _HOSTILE_HEADER.size) // 8


@guest_code(HOSTILE_ALLOCATE)
def _hostile_allocate(vp: Cpu, block: int) -> int:
    """The honest routine answers first; then the output PFNs of a successful answer are the
    offered ones, in order, for as long as they last (across calls)."""
    original, offered, used = _HOSTILE_HEADER.unpack(vp.read(HOSTILE_DATA_VA, _HOSTILE_HEADER.size))
    want = vp.read_u64(block + FIELDS_OFFSET + 8)  # Field2 of the request: the page count
    if original:
        vp.call(original, block)
    fields = request_fields(vp, block)
    if fields[0] == NtStatus.SUCCESS:
        for index in range(1, min(want, len(fields) - 1) + 1):
            if used >= offered:
                break
            fields[index] = vp.read_u64(HOSTILE_DATA_VA + _HOSTILE_HEADER.size + 8 * used)
            used += 1
        write_answer(vp, block, fields)
        vp.write_u64(HOSTILE_DATA_VA + 16, used)
    return fields[0]


@guest_code("invariants.user")
def _user(vp: VirtualProcessor, op: str, args: tuple[Any, ...]) -> Any:
    """The U0/A0 attacker's code at VTL0 CPL3: one action (arguments already resolved)."""
    if op == "syscall":
        number, values = args
        vp.rax = number & MASK64
        vp.r10, vp.rdx, vp.r8, vp.r9 = (v & MASK64 for v in values)
        vp.syscall()
        return vp.rax
    if op == "uread":
        va, length = args
        data = vp.read(va, min(length, MAX_MOVE))
        vp.rax = int.from_bytes(data[:8], "little")
        return data
    if op == "uwrite":
        va, data = args
        vp.write(va, data)
        return None
    if op == "privileged":
        what = args[0]
        if what == "vmcall":
            vp.vmcall()
        elif what == "wrmsr":
            vp.wrmsr(int(Msr.LSTAR), 0)
        elif what == "movcr":
            vp.mov_to_cr(4, 0)
        elif what == "lidt":
            vp.lidt(0, 0)
        elif what == "invlpg":
            vp.invlpg(0)
        else:
            vp.out(DEFAULT_BASE, 4, 0)
        return None
    if op == "call":
        return vp.call(args[0])
    if op == "sequence":  # several syscalls in one run (exec, alpc, NtRead/Write...)
        result: list[int] = []
        for number, values, pre in args:
            for va, data in pre:
                vp.write(va, data)
            vp.rax = number & MASK64
            vp.r10, vp.rdx, vp.r8, vp.r9 = (v & MASK64 for v in values)
            vp.syscall()
            result.append(vp.rax)
        return result
    return None


@functools.lru_cache(maxsize=4)
def _trustlet_image(kind: str, data_dir: str) -> bytes:
    from vbsim.boot import trustlets
    from vbsim.ium import images

    if kind == "fuzzlet":
        return trustlets.trustlet_image(FUZZLET, trustlet_id=FUZZLET_ID, entry="invariants.fuzzlet")
    name = images.VMSP if kind == "vmsp" else images.LSAISO
    return trustlets.installed(name, Policy().component(name))


def trustlet_image(kind: str) -> bytes:
    from vbsim.image import data_dir

    return _trustlet_image(kind, str(data_dir()))


# -- running programs ----------------------------------------------------------------------------
@dataclass
class _UserContext:
    process: Process
    entry: int
    buffer: int


@dataclass
class RunResult:
    actions: int = 0
    terminated: str | None = None
    outcomes: list[str] = field(default_factory=list)
    #: the steps after which the attacker held a new handle or cookie (resource producers)
    produced: list[int] = field(default_factory=list)


class Session:
    """A booted machine with the attacker's footholds, and (optionally) the monitor attached."""

    def __init__(self, policy: str | Policy, *, monitor: bool = True, budget: int = 16) -> None:
        self.policy = preset(policy) if isinstance(policy, str) else policy
        self.system: System = boot(self.policy, trace=Trace(record=False))
        if not self.system.booted or self.system.machine is None or self.system.nt is None:
            raise RuntimeError(f"{self.policy.name} did not boot: {self.system.halted}")
        self.machine = self.system.machine
        self.nt: NtKernel = self.system.nt
        self.sk: SecureKernel | None = self.system.sk
        self.vp = self.machine.bsp
        self.dead: str | None = None
        self.handles: list[int] = [FIRST_HANDLE + 4 * i for i in range(4)]
        self.cookies: list[int] = [0x10, 0x11, 0x12]
        self.trustlets: list[Process] = []
        self._hostile_page: int | None = None
        self._setup()
        self.monitor: Monitor | None = None
        if monitor:
            self.monitor = Monitor.attach(self.system, budget=budget)
            for device in (self.device, self.rogue):
                self.monitor.watch_device(device)

    # -- footholds ------------------------------------------------------------------------------
    def _setup(self) -> None:
        nt, vp = self.nt, self.vp
        # The attacker's pages come from NT, as any driver's do (ExAllocatePool: NT's PFN
        # database), in NT's mode on the boot processor; zeroed by NT's allocator.
        self.loot = [nt.alloc_page(vp.cpu) for _ in range(LOOT_PAGES)]
        self.stage = [nt.alloc_page(vp.cpu) for _ in range(STAGE_PAGES)]
        tables = PageTables(nt.phys(vp.cpu), nt.space.root)
        self.window_ptes: list[int] = []
        for slot in range(WINDOW_PAGES):
            target = (self.loot + self.stage)[slot % (LOOT_PAGES + STAGE_PAGES)]
            tables.map(WINDOW_VA + slot * PAGE_SIZE, target << PAGE_SHIFT, int(Pte.RW | Pte.NX))
            pte = tables.pte_gpa(WINDOW_VA + slot * PAGE_SIZE)
            assert pte is not None
            self.window_ptes.append(pte)
        self.users: dict[str, _UserContext] = {}
        for name, token in (
            ("U0", Token("user")),
            ("A0", Token("administrator", admin=True, debug_privilege=True, load_driver=True)),
        ):
            process = nt.create_process(vp.cpu, f"attacker-{name}.exe", token)
            self.users[name] = self._user_context(process)
        lsass_pid = nt.lsass.pid if nt.lsass is not None else None
        lsass = nt.lookup_process(vp.cpu, lsass_pid) if isinstance(lsass_pid, int) else None
        if lsass is not None:
            self.users["lsass"] = self._user_context(lsass)
        self.device = DmaDevice("invariants-nic", self.machine.iommu)
        self.port = DEFAULT_BASE + 0x100
        self.device.claim(self.machine.bus, self.port)
        self.device.load(b"\x5a" * PAGE_SIZE)
        self.rogue = DmaDevice.malicious(self.machine.iommu, "invariants-rogue")
        self.rogue.load(b"\xa5" * PAGE_SIZE)
        lsaiso = nt.started_trustlets.get("LsaIso.exe")
        shadow = nt.lookup_process(vp.cpu, lsaiso) if isinstance(lsaiso, int) else None
        if shadow is not None:
            self.trustlets.append(shadow)
            self.handles.append(shadow.secure_pid)
        self._code_pages = list(nt.space.code_pages)
        if self.sk is not None:
            # The attacker's footholds in IUM: its own signed trustlet (the "fuzzlet", standing for
            # a bug in a signed trustlet) and a vmsp instance it may talk to.
            self._start_trustlet("fuzzlet", (), FUZZLET_ID, 0)
            self._start_trustlet("vmsp", (), 2, 0)

    def _user_context(self, process: Process) -> _UserContext:
        nt, vp = self.nt, self.vp
        entry = nt.map_code(vp.cpu, process, ["invariants.user"])["invariants.user"]
        buffer = nt.allocate(vp.cpu, process, USER_BUFFER_PAGES * PAGE_SIZE).base
        return _UserContext(process, entry, buffer)

    def _map_hostile_data(self) -> None:
        """The hostile routine's data page at HOSTILE_DATA_VA (a page from NT, mapped by the
        attacker's PTE write; once per session)."""
        if self._hostile_page is not None:
            return
        nt, cpu = self.nt, self.vp.cpu
        self._hostile_page = nt.alloc_page(cpu)
        tables = PageTables(nt.phys(cpu), nt.space.root)
        tables.map(HOSTILE_DATA_VA, self._hostile_page << PAGE_SHIFT, int(Pte.RW | Pte.NX))
        cpu.invlpg(HOSTILE_DATA_VA)

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.detach()
        from vbsim.invariants.teardown import release

        release(self.machine)

    @property
    def healthy(self) -> bool:
        """Whether the next program can start where this one left (else: reboot)."""
        vp = self.vp
        return (
            self.dead is None
            and vp.vtl == 0
            and vp.cpl == 0
            and vp.p.cr3 == self.nt.space.root
            and all(not v.vtl for v in self.machine.vps)
        )

    # -- resolving arguments ---------------------------------------------------------------------
    def pool(self, name: str) -> list[int]:
        sk, ram = self.sk, self.machine.ram
        if name == "loot":
            return self.loot
        if name == "stage":
            return self.stage
        if name == "nt":
            assert self.system.nt_space is not None
            return sorted(set(self.system.nt_space.frames))
        if name == "ntpt":
            assert self.system.nt_space is not None
            return list(self.system.nt_space.pt.frames or [])
        if name == "ntcode":
            return self._code_pages
        if name == "free":
            # Pages nobody owns yet: the next never-used frames of NT's PFN database (RAM).
            head = self.nt.variables["MmFreePageListHead"].gpa
            fresh = host_next_fresh(ram, head)
            return [min(fresh + i, ram.pages - 1) for i in range(8)]
        if name == "edge":
            return [
                0,
                ram.pages - 1,
                ram.pages,
                ram.pages + 1,
                1 << 20,
                1 << 32,
                (1 << 40) - 1,
                MASK64 >> 12,
            ]
        if sk is None:
            return []
        if name == "sk":
            assert self.system.sk_space is not None
            return sorted(set(self.system.sk_space.frames))
        if name == "vtl1":
            return sorted(sk.host_own_pages(ram))
        table = sk.host_processes(ram)
        processes = [p for p in table.values() if isinstance(p, ium.SecureProcess)]
        if name == "trustlet":
            return [pfn for p in processes for pfn in p.host_private_pfns(ram)]
        if name == "image":
            return [pfn for p in processes for pfn in p.host_image_pfns(ram)]
        if name == "hlat":
            from vbsim.sk import hvpt

            state = hvpt.state(sk)
            return list(state.table_pfns) if state is not None else []
        if name == "kdp":
            from vbsim.sk.services import kdp

            kstate = sk.kdp
            if isinstance(kstate, kdp.KdpState):
                owners = ram.read(kstate.owners_gpa, kstate.pages)
                # one byte per RAM page, almost all zero: let the regex engine skip the zeros
                return [match.start() for match in _OWNED.finditer(owners)]
        return []

    def resolve(self, value: Any, user: _UserContext | None = None) -> int:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value & MASK64
        if isinstance(value, str):
            service = Service(value)
            return self.nt.vsl.table.number.get(service, 0xFFFF) if self.nt.vsl else 0
        if not isinstance(value, Ref):
            return 0
        space, pool, index, offset = value.space, value.pool, value.nth, value.offset
        if space in ("pfn", "gpa", "dm"):
            pages = self.pool(pool) or [0]
            pfn = pages[index % len(pages)]
            if space == "pfn":
                return (pfn + offset // PAGE_SIZE) & MASK64 if pool != "edge" else pfn & MASK64
            gpa = ((pfn << PAGE_SHIFT) + offset) & MASK64
            return gpa if space == "gpa" else (DIRECT_MAP + gpa) & MASK64
        if space == "handle":  # index 0 is the newest handle (the one just created)
            return self.handles[-1 - index % len(self.handles)]
        if space == "cookie":
            return self.cookies[-1 - index % len(self.cookies)]
        if space == "window":
            return WINDOW_VA + (index % WINDOW_PAGES) * PAGE_SIZE + offset % PAGE_SIZE
        if space == "user":
            context = user or self.users["U0"]
            return (context.buffer + offset) & MASK64
        if space == "kva":
            if pool == "code":
                return (
                    CODE_BASE + (index % max(1, len(self._code_pages))) * PAGE_SIZE + offset
                ) & MASK64
            return (self.nt.data_va + offset) & MASK64
        if space == "tva":
            base = {
                "message": ium.MESSAGE_VA,
                "reply": ium.REPLY_VA,
                "heap": ium.HEAP_VA,
                "private": ium.PRIVATE_BASE + (index % ium.PRIVATE_PAGES) * PAGE_SIZE,
                "image": ium.IMAGE_BASE + (index % 4) * PAGE_SIZE,
                "sk": DATA_BASE + (index % 64) * PAGE_SIZE,
                "vtl0": 0x1000_0000 + (index % 4) * PAGE_SIZE,
            }.get(pool, 0)
            return (base + offset) & MASK64
        if space == "pid":
            return self._pid(pool)
        return 0

    def _pid(self, which: str) -> int:
        nt = self.nt
        if which == "lsass":
            value = nt.lsass.pid if nt.lsass is not None else 0
        elif which == "lsaiso":
            value = nt.started_trustlets.get("LsaIso.exe", 0)
        elif which == "system":
            value = 4
        else:
            value = self.users["A0"].process.pid
        return value if isinstance(value, int) else 0

    # -- running --------------------------------------------------------------------------------
    def run(self, program: Program) -> RunResult:
        """Run ``program`` step by step with the monitor; stops at the first termination (the
        machine is then dead).  Raises :class:`~vbsim.invariants.InvariantViolation`."""
        result = RunResult()
        for number, action in enumerate(program.actions):
            if self.dead is not None:
                break
            label = f"{program.capability} #{number} {action!r}"
            monitor = self.monitor
            if monitor is not None:
                monitor.begin_step(label)
            stop: GuestTermination | None = None
            held = len(self.handles) + len(self.cookies)
            try:
                outcome = self.execute(program.capability, action)
                result.outcomes.append(outcome)
                if len(self.handles) + len(self.cookies) > held:
                    result.produced.append(number)
            except GuestTermination as termination:
                stop = termination
                self.dead = f"{type(termination).__name__}: {termination}"
                result.terminated = self.dead
            except BaseException:
                self.dead = "an exception escaped the model"
                raise  # a model bug: reported as itself, not as whatever the checks would say
            if self.vp.vtl == 0:
                self.vp.actor = "nt"
            if monitor is not None:
                monitor.end_step(stop)
            result.actions += 1
        self._switch_back()
        return result

    def _switch_back(self) -> None:
        """A program that left CR3 on another address space (its ``mov cr3``) is followed by NT's
        next context switch to the system process: a ``mov cr3`` through the processor like any
        other, watched by the monitor.  The machine then needs no reboot for it."""
        vp, root = self.vp, self.nt.space.root
        if self.dead is not None or vp.vtl != 0 or vp.cpl != 0 or vp.p.cr3 == root:
            return
        monitor = self.monitor
        if monitor is not None:
            monitor.begin_step("NT context switch to the system process")
        stop: GuestTermination | None = None
        try:
            vp.cpu.mov_to_cr(3, root)
        except GuestTermination as termination:
            stop = termination
            self.dead = f"{type(termination).__name__}: {termination}"
        if monitor is not None:
            monitor.end_step(stop)

    def execute(self, capability: str, action: Action) -> str:
        if capability == "K0":
            self.vp.actor = "attacker (K0)"
            return self._k0(action)
        if capability in ("U0", "A0"):
            return self._user(capability, action)
        return self._phys(action)

    # K0 ------------------------------------------------------------------------------------
    def _k0(self, action: Action) -> str:
        vp, nt = self.vp, self.nt
        op, args = action.op, action.args
        loot_va = DIRECT_MAP + (self.loot[0] << PAGE_SHIFT)
        r = self.resolve
        if op == "read":
            data = vp.read(r(args[0]), min(r(args[1]), MAX_MOVE))
            vp.write(loot_va, data[:PAGE_SIZE])
            vp.rax = int.from_bytes(data[:8], "little")
            return f"read {len(data)}"
        if op == "write":
            vp.write(r(args[0]), args[1])
            return "written"
        if op == "pte":
            slot, target, flags, flush = args
            value = (r(target) & PTE_ADDR_MASK) | (flags & ~PTE_ADDR_MASK & MASK64)
            vp.write_u64(DIRECT_MAP + self.window_ptes[slot % WINDOW_PAGES], value)
            if flush:
                vp.invlpg(WINDOW_VA + (slot % WINDOW_PAGES) * PAGE_SIZE)
            return "pte"
        if op == "touch":
            slot, offset, access = args
            va = WINDOW_VA + (slot % WINDOW_PAGES) * PAGE_SIZE + offset % (PAGE_SIZE - 7)
            if access == "r":
                value = vp.read_u64(va)
                vp.write_u64(loot_va, value)
                vp.rax = value
            elif access == "w":
                vp.write_u64(va, 0x4141_4141_4141_4141)
            else:
                vp.call(va)
            return f"touch {access}"
        if op == "hypercall":
            control, rdx, r8, data, xmm = args
            vp.write(DIRECT_MAP + (self.stage[0] << PAGE_SHIFT), data)
            raw = xmm.ljust(96, b"\0")
            for i in range(6):
                vp.xmm[i] = int.from_bytes(raw[16 * i : 16 * i + 16], "little")
            result = hvcall.raw_hypercall(vp.cpu, r(control), r(rdx), r(r8))
            return f"hypercall {result.status_name}"
        if op == "securecall":
            return self._securecall(*args)
        if op == "stage_mdl":
            from vbsim.sk.services.allocation import mdl_bytes

            slot, at, pfns, byte_count, byte_offset, size = args
            pfn_values = [r(p) for p in pfns]
            raw = mdl_bytes(
                pfn_values, byte_count & 0xFFFF_FFFF, byte_offset & 0xFFFF_FFFF, 0, size
            )
            page = DIRECT_MAP + (self.stage[slot % STAGE_PAGES] << PAGE_SHIFT)
            vp.write(page + at, raw[: PAGE_SIZE - at])
            return "staged"
        if op == "stage_list":
            slot, pfns = args
            raw = b"".join(r(p).to_bytes(8, "little") for p in pfns)
            vp.write(
                DIRECT_MAP + (self.stage[slot % STAGE_PAGES] << PAGE_SHIFT), raw.ljust(64, b"\0")
            )
            return "staged"
        if op == "wrmsr":
            msr, value, enable = args
            vp.wrmsr(msr, r(value) | enable)
            return "wrmsr"
        if op == "rdmsr":
            vp.rax = vp.rdmsr(args[0])
            return "rdmsr"
        if op == "movcr":
            cr, value, xor = args
            current = {0: vp.p.cr0, 3: vp.p.cr3, 4: vp.p.cr4, 8: vp.p.cr8, 2: vp.cr2}.get(cr, 0)
            vp.mov_to_cr(cr, current ^ (value & 0xFFFF) if xor else r(value))
            return "movcr"
        if op == "table":
            which, base, limit = args
            (vp.lidt if which == "idtr" else vp.lgdt)(r(base), limit)
            return "table"
        if op == "dma":
            direction, iova, length = args
            status = driver_transfer(
                vp,
                self.port,
                r(iova),
                min(r(length), MAX_MOVE),
                DIR_FROM_MEMORY if direction else DIR_TO_MEMORY,
            )
            return f"dma {status}"
        if op == "driver":
            from vbsim.nt import drivers

            return f"driver {NtStatus.name_of(drivers.load_driver(nt, vp.cpu, args[0]))}"
        if op == "trustlet":
            return self._start_trustlet(*args)
        if op == "resume":
            index, message, selector = args
            if not self.trustlets:
                return "no trustlet"
            process = self.trustlets[index % len(self.trustlets)]
            run = secure_process.run_trustlet(nt, vp.cpu, process, message, selector)
            return f"resume {NtStatus.name_of(run.status)}"
        if op == "fuzzlet":
            index, number, values = args
            fuzzlets = [p for p in self.trustlets if p.trustlet_id == FUZZLET_ID]
            if not fuzzlets:
                return "no fuzzlet"
            process = fuzzlets[index % len(fuzzlets)]
            message = _FUZZLET_MESSAGE.pack(r(number), *(r(v) for v in values))
            run = secure_process.run_trustlet(nt, vp.cpu, process, message)
            return f"fuzzlet {NtStatus.name_of(run.status)} {run.reply.hex()}"
        if op == "thunk":
            vp.write(r(args[0]), code.encode_thunk(args[1]))
            return "thunk"
        if op == "call":
            vp.call(r(args[0]))
            return "called"
        if op == "invlpg":
            vp.invlpg(r(args[0]))
            return "invlpg"
        if op == "syscall0":
            vp.syscall()  # from CPL0: #UD
            return "syscall"
        return "nop"

    def _securecall(
        self, op: int, code_: Value, cookie: Value, fields: tuple[Value, ...], mode: tuple[Any, ...]
    ) -> str:
        vp, nt, r = self.vp, self.nt, self.resolve
        if nt.vsl is None:
            return "no vsl"
        args = SecureCallArgs(
            op & 0xFF, r(code_) & 0xFFFF, r(cookie) & 0xFFFF_FFFF, [r(f) for f in fields]
        )
        request = args
        reply = args
        for _ in range(16):
            callargs.to_registers(vp.cpu, request.pack())
            hvcall.vtl_call(vp.cpu)
            reply = SecureCallArgs.unpack(callargs.from_registers(vp.cpu))
            if reply.op != callargs.OP_NORMAL_CALL:
                break
            if mode and mode[0] == "abandon":
                return "abandoned"
            if mode and mode[0] == "toctou":
                vp.write(r(mode[1]), mode[2])
                mode = ()
            if mode and mode[0] == "hostile":
                outputs = [r(v) for v in mode[1]]
                mode = ()
            else:  # NT's own dispatcher answers (VslpNormalCallTable, as RAM holds it now)
                outputs = nt.vsl.dispatch(vp.cpu, reply).fields
            request = SecureCallArgs(callargs.OP_NORMAL_REPLY, args.code, args.cookie, outputs)
        status = reply.fields[0] if reply.fields else 0
        if status == NtStatus.SUCCESS:
            for value in reply.fields[1:3]:
                if FIRST_HANDLE <= value < FIRST_HANDLE + (1 << 24) and value not in self.handles:
                    self.handles.append(value)
                elif 0x10 <= value < 0x1000 and value not in self.cookies:
                    self.cookies.append(value)
        return f"securecall {NtStatus.name_of(status)}"

    def _start_trustlet(
        self,
        kind: str,
        mutations: tuple[tuple[int, int], ...],
        trustlet_id: int,
        truncate: int,
        hostile: tuple[Value, ...] = (),
    ) -> str:
        image = bytearray(trustlet_image(kind))
        for offset, flip in mutations:
            image[offset % len(image)] ^= flip
        if truncate:
            image = image[: max(1, len(image) - truncate)]
        name = {"fuzzlet": FUZZLET, "vmsp": "vmsp.exe"}.get(kind, "LsaIso.exe")
        if trustlet_id < 0:
            trustlet_id = {"fuzzlet": FUZZLET_ID, "vmsp": 2}.get(kind, 1)
        stubs, cpu = self.nt.vsl, self.vp.cpu
        slot = stubs.normal_call_slot(ium.NORMAL_ALLOCATE_PAGES) if stubs and hostile else 0
        honest = cpu.read_u64(slot) if slot else 0
        if honest:
            # NT (the attacker's) answers the SK's "give me pages" with pages of its choosing:
            # the hostile routine's VA into NT's normal-call table (a K0 write), its data at
            # its VA, the table put back afterwards.
            self._map_hostile_data()
            offered = [self.resolve(v) & MASK64 for v in hostile][:HOSTILE_MAX]
            header = _HOSTILE_HEADER.pack(honest, len(offered), 0)
            cpu.write(HOSTILE_DATA_VA, header + b"".join(struct.pack("<Q", v) for v in offered))
            assert self.system.nt_space is not None
            cpu.write_u64(slot, self.system.nt_space.install(HOSTILE_ALLOCATE))
        try:
            status, process = secure_process.create_secure_process(
                self.nt, cpu, name, trustlet_id, MAILBOX_KEY, None, bytes(image)
            )
        finally:
            if honest:
                cpu.write_u64(slot, honest)
        if process is not None:
            self.trustlets.append(process)
            self.handles.append(process.secure_pid)
            cookie = host_secure_thread_cookie(self.machine.ram, process.eprocess) or None
            if isinstance(cookie, int):
                self.cookies.append(cookie)
        return f"trustlet {NtStatus.name_of(status)}"

    # U0 / A0 -------------------------------------------------------------------------------
    def _user(self, capability: str, action: Action) -> str:
        op, args = action.op, action.args
        context = self.users[capability]
        r = functools.partial(self.resolve, user=context)
        steps: Any
        routine_op = "sequence"
        buffer = context.buffer
        if op == "syscall":
            name_or_number, values = args
            number = (
                NT_NUMBERS[name_or_number] if isinstance(name_or_number, str) else r(name_or_number)
            )
            routine_op, steps = "syscall", (number, tuple(r(v) for v in values))
        elif op == "uread":
            routine_op, steps = "uread", (r(args[0]), r(args[1]))
        elif op == "uwrite":
            routine_op, steps = "uwrite", (r(args[0]), args[1])
        elif op == "privileged":
            routine_op, steps = "privileged", args
        elif op == "exec":
            routine, _ = args
            # NtAllocateVirtualMemory(&base, 4096, PAGE_EXECUTE_READWRITE), then a thunk, then call.
            allocate = (NT_NUMBERS["NtAllocateVirtualMemory"], (buffer, PAGE_SIZE, 0x40, 0), ())
            status = self._run_user(context, "sequence", (allocate,))
            if not isinstance(status, list) or not status or status[0] != 0:
                return "exec: no memory"
            base = self._read_user_u64(context, buffer)
            if not base:
                return "exec: no base"
            self._run_user(context, "uwrite", (base, code.encode_thunk(routine)))
            self._run_user(context, "call", (base,))
            return f"exec {routine}"
        elif op == "alpc":
            target, message, in_lsass = args
            if in_lsass and capability == "A0" and "lsass" in self.users:
                # An administrator with SeDebugPrivilege runs code inside lsass (A21's path).
                context = self.users["lsass"]
                buffer = context.buffer
            port = self._pid("lsaiso") if target == "lsaiso" else self._vmsp_pid()
            request, reply = buffer + 0x1000, buffer + 0x2000
            steps = (
                (
                    NT_NUMBERS["NtAlpcSendWaitReceivePort"],
                    (port, request, len(message), reply),
                    ((request, message),) if message else (),
                ),
            )
        elif op in ("readvm", "writevm"):
            pid, address, length, data = args
            name = "NtReadVirtualMemory" if op == "readvm" else "NtWriteVirtualMemory"
            size = min(r(length), PAGE_SIZE) or 1
            pre = ((buffer + 0x3000, data),) if op == "writevm" else ()
            steps = ((NT_NUMBERS[name], (r(pid), r(address), buffer + 0x3000, size), pre),)
        elif op == "protectvm":
            pid, address, size, protect = args
            steps = (
                (NT_NUMBERS["NtProtectVirtualMemory"], (r(pid), r(address), size, protect), ()),
            )
        elif op == "load_driver":
            raw = args[0].encode()
            steps = ((NT_NUMBERS["NtLoadDriver"], (buffer, len(raw), 0, 0), ((buffer, raw),)),)
        elif op == "ioctl":
            ioctl, address, value = args
            raw = b"vbsim_vuln.sys"
            payload = r(address).to_bytes(8, "little") + r(value).to_bytes(8, "little")
            steps = (
                (
                    NT_NUMBERS["NtDeviceIoControlFile"],
                    (buffer, len(raw), ioctl, buffer + 0x100),
                    ((buffer, raw), (buffer + 0x100, payload)),
                ),
            )
        else:
            return "nop"
        outcome = self._run_user(context, routine_op, steps)
        return f"{op} {outcome!r}"[:80]

    def _run_user(self, context: _UserContext, op: str, args: Any) -> Any:
        nt, vp = self.nt, self.vp
        from vbsim.nt.process import host_view

        admin = host_view(self.machine.ram, context.process.eprocess).admin
        actor = "attacker (A0)" if admin else "attacker (U0)"
        vp.actor = actor
        run = nt.run_user(vp.cpu, context.process, context.entry, op, args)
        vp.actor = "nt"
        if run.terminated is not None:
            return f"thread terminated: {run.terminated.reason}"
        return run.returned

    def _read_user_u64(self, context: _UserContext, va: int) -> int:
        value = self._run_user(context, "uread", (va, 8))
        return int.from_bytes(value[:8], "little") if isinstance(value, bytes) else 0

    def _vmsp_pid(self) -> int:
        for process in self.trustlets:
            if process.trustlet_id == 2:
                return process.pid
        return self._pid("lsaiso")

    # PHYS ------------------------------------------------------------------------------------
    def _phys(self, action: Action) -> str:
        r = self.resolve
        if action.op == "dma_read":
            iova, length = action.args
            data = self.rogue.dma_read(r(iova), min(r(length), MAX_MOVE) or 1)
            return "read" if data is not None else "blocked"
        iova, data = action.args
        return f"write {self.rogue.dma_write(r(iova), data)}"


def run_program(program: Program, policy: str | Policy, *, monitor: bool = True) -> RunResult:
    """Run one program on a freshly booted machine (what the property tests and regressions do)."""
    session = Session(policy, monitor=monitor)
    try:
        result = session.run(program)
        if session.monitor is not None:
            session.monitor.sweep()
        return result
    finally:
        session.close()
