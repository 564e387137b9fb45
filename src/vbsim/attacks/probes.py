"""The access matrix's probes: guest code that runs in the prober's own mode, on a :class:`Cpu`.

Four kinds of prober run these (``vbsim.attacks.matrix`` schedules them and reads the outcome):

- a VTL0 process at CPL3 (``matrix.user_op``, ``matrix.user_call``), scheduled by NT;
- a trustlet at VTL1 CPL3 (``matrix.trustlet_op``), whose thread NT resumes through the SK;
- NT's ring 0 (:func:`kernel_op`, :func:`kernel_call`), a K0 payload (it stands for a chain over
  signed code, as every K0 payload of the catalogue does);
- the Secure Kernel's ring 0 (:func:`kernel_op`, :func:`sk_call`), K1 code entered through a real
  secure call.

Every probe first emits a ``matrix/probe/begin`` event: the trace records the VTL and CPL the
processor was in when the prober's own code ran, and the matrix accepts a cell only from a probe
that began in the prober's mode.  The target's code (``matrix.probe``) carries a breakpoint: the
processor that fetches it records the VTL and CPL it runs in (``Trace.executions``), so an execute
or an entry into user code counts only where the routine really ran.  What a read obtained goes
into the prober's own memory (its *loot* page); the matrix host reads it from there, never from a
Python return value.

Only the architectural surface is used (``vbsim.hw.cpu.SURFACE``).  The three kernel services the
probes call (``SecureKernel.normal_call``, ``SecureKernel.protect_own_pages``, ``Vsl.call``) are
still typed with the processor class while NT and the SK move onto :class:`Cpu` (issue 10);
:func:`_legacy` bridges that one typing gap and nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from vbsim.hv.defs import HvCallCode
from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_MASK, PTE_ADDR_MASK, Pte
from vbsim.nt.syscalls import NUMBERS as NT_NUMBERS
from vbsim.sk.ium.process import HEAP_VA, NORMAL_ALLOCATE_PAGES
from vbsim.sk.ium.syscalls import SECURE_NUMBERS
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.hw.vp import VirtualProcessor

MARKER = b"MATRIX-MARKER-0123456789"
SCRIBBLE = b"X" * len(MARKER)
#: What ``matrix.probe`` returns: the answer a caller gets only if the routine really ran.
PROBE_ANSWER = 0x600D
#: The loot word before a probe: an answer nobody gives (a skipped probe leaves it there).
POISON = 0xDEAD_BEEF_DEAD_BEEF

OP_READ, OP_WRITE, OP_EXECUTE, OP_CALL = 1, 2, 3, 4
#: The gates a prober can try (``OP_CALL``).
GATE_SYSCALL = 1  # syscall into the kernel of the same VTL (LSTAR)
GATE_SECURE_SYSCALL = 2  # syscall with the secure bit (0x0800_0000), iumdll's stub
GATE_VTL_CALL = 3  # the hypercall page's VTL call (vmcall, RCX = 0x11)
GATE_VTL_RETURN = 4  # the hypercall page's VTL return (vmcall, RCX = 0x12)
GATE_SYSRET = 5  # sysret into user code, back by syscall (KeUserModeCallback's pair)
GATE_SECURE_CALL = 6  # NT's Vsl* stub: a secure call
GATE_NORMAL_CALL = 7  # the SK's normal call: a VTL return with a request, answered by NT

#: Leaf rights of the mappings a kernel builds for a probe (its window, or what it grants a user
#: process or trustlet on purpose): present, writable, executable; only SLAT can still refuse.
WINDOW_FLAGS = int(Pte.P | Pte.RW)
GRANT_FLAGS = int(Pte.P | Pte.RW | Pte.US)
_TABLE = int(Pte.P | Pte.RW | Pte.US)  # intermediate entries: permissive, the leaf decides
_P, _PS = int(Pte.P), int(Pte.PS)
#: 4-level walk: the shifts of PML4, PDPT and PD indices (SDM Vol. 3A §4.5).
_SHIFTS = (39, 30, 21)
#: Where a trustlet's IUM scratch output goes for IumGetIdk (iumbase's output buffer; the
#: marker the trustlet owns lives at HEAP_VA + 0x800, clear of it).
_IDK_OUT = HEAP_VA + 0x900


def _legacy(cpu: Cpu) -> VirtualProcessor:
    """A kernel service still typed with the processor class (see the module docstring)."""
    return cast("VirtualProcessor", cpu)


def begin(cpu: Cpu, op: int, target: int) -> None:
    """The prober's first instruction: the trace records the mode it runs in."""
    if cpu.tracing:
        cpu.emit("matrix", "probe", "begin", op=op, target=target)


PROBE_ROUTINE = "matrix.probe"


@guest_code(PROBE_ROUTINE, breakpoint=True)
def probe_routine(cpu: Cpu) -> int:
    """The target's code.  Its breakpoint records where it runs (the fetching VP's VTL and
    CPL, ``Trace.executions``)."""
    return PROBE_ANSWER


def access(cpu: Cpu, op: int, va: int, loot: int) -> None:
    """Read ``va`` into the loot page, scribble over it, or call it (the answer to the loot)."""
    if op == OP_READ:
        cpu.write(loot, cpu.read(va, len(MARKER)))
    elif op == OP_WRITE:
        cpu.write(va, SCRIBBLE)
    elif op == OP_EXECUTE:
        answer = cpu.call(va)
        cpu.write_u64(loot, answer if isinstance(answer, int) else 0)


def map_page(
    cpu: Cpu, root: int, va: int, gpa: int, flags: int, direct_map: int, spares: tuple[int, ...]
) -> int:
    """Build the PTE ``va`` → ``gpa`` in the tables at ``root``, through the kernel's own direct
    map (so every store passes the kernel's paging and its VTL's SLAT).  Missing intermediate
    tables take frames from ``spares`` (zeroed pages the kernel allocated for this), in order.
    Returns how many it took, or -1 if none was left or a large page is in the way."""
    table = root & PTE_ADDR_MASK
    taken = 0
    for shift in _SHIFTS:
        entry_va = direct_map + table + (((va >> shift) & 0x1FF) << 3)
        entry = cpu.read_u64(entry_va)
        if not entry & _P:
            if taken >= len(spares):
                return -1
            entry = (spares[taken] & PTE_ADDR_MASK) | _TABLE
            taken += 1
            cpu.write_u64(entry_va, entry)
        elif entry & _PS:
            return -1
        table = entry & PTE_ADDR_MASK
    cpu.write_u64(direct_map + table + (((va >> 12) & 0x1FF) << 3), (gpa & PTE_ADDR_MASK) | flags)
    cpu.invlpg(va)
    return taken


# -- VTL0 user mode ------------------------------------------------------------------------------
@guest_code("matrix.user_op")
def user_op(cpu: Cpu, op: int, target: int, va: int, loot: int) -> int:
    begin(cpu, op, target)
    access(cpu, op, va, loot)
    return 0


@guest_code("matrix.user_call")
def user_call(cpu: Cpu, gate: int, target: int, loot: int) -> int:
    """Try a gate from CPL3; the answer (RAX after the gate) goes to the loot page."""
    begin(cpu, OP_CALL, target)
    if gate == GATE_SYSCALL:
        cpu.rax = NT_NUMBERS["NtTestAlert"]
        cpu.syscall()
    elif gate == GATE_SECURE_SYSCALL:  # the trustlet's way into the SK, tried from VTL0
        cpu.rax = SECURE_NUMBERS["IumGetIdk"]
        cpu.r10, cpu.rdx, cpu.r8 = 0, loot + 64, 32
        cpu.syscall()
    else:
        _hypercall(cpu, HvCallCode.VTL_CALL)  # CPL3: #UD (vsm-spec §1.1)
    cpu.write_u64(loot, cpu.rax)
    return 0


def _hypercall(cpu: Cpu, code: int) -> None:
    """The hypercall page's VTL call/return stub: ``mov rax, rcx; mov ecx, code; vmcall``."""
    cpu.rcx = 0
    cpu.rax = cpu.rcx
    cpu.rcx = code
    cpu.vmcall()


# -- VTL1 user mode (a trustlet) ------------------------------------------------------------------
#: The message NT carries to the probe trustlet: op, target, gate (one byte each), VA at +8.
MESSAGE_SIZE = 16


def trustlet_message(op: int, target: int, gate: int = 0, va: int = 0) -> bytes:
    return bytes([op, target, gate]) + bytes(5) + va.to_bytes(8, "little")


@guest_code("matrix.trustlet_op")
def trustlet_op(cpu: Cpu, message: int, length: int, reply: int) -> int:
    """The probe trustlet's entry: the reply page is its loot (the SK copies it out to NT)."""
    op, target, gate = cpu.read(message, 3)
    va = cpu.read_u64(message + 8)
    begin(cpu, op, target)
    if op == OP_READ:
        access(cpu, op, va, reply)
        return len(MARKER)
    if op == OP_WRITE:
        access(cpu, op, va, reply)
        return 0
    if op == OP_EXECUTE:
        access(cpu, op, va, reply)
        return 8
    if gate == GATE_SECURE_SYSCALL:
        cpu.rax = SECURE_NUMBERS["IumGetIdk"]
        cpu.r10, cpu.rdx, cpu.r8, cpu.r9 = 0, _IDK_OUT, 32, 0
        cpu.syscall()
    else:
        _hypercall(cpu, HvCallCode.VTL_RETURN)  # down to VTL0 from CPL3: #UD
    cpu.write_u64(reply, cpu.rax)
    return 8


# -- ring 0 (NT's, or the Secure Kernel's) -------------------------------------------------------
def kernel_op(
    cpu: Cpu,
    op: int,
    target: int,
    gpa: int,
    window: int,
    direct_map: int,
    loot: int,
) -> None:
    """A kernel maps ``gpa`` at its window in its own tables (CR3) and accesses it there."""
    begin(cpu, op, target)
    root = cpu.read_cr(3)
    flags = WINDOW_FLAGS | (0 if op == OP_EXECUTE else int(Pte.NX))
    if map_page(cpu, root, window, gpa & ~PAGE_MASK, flags, direct_map, ()) >= 0:
        access(cpu, op, window + (gpa & PAGE_MASK), loot)


def enter_user(cpu: Cpu, target: int, root: int, entry: int, loot: int) -> None:
    """A kernel runs user code of its own VTL: CR3 to the address space, ``sysret`` to ``entry``;
    the routine's answer comes back when it returns (``syscall``)."""
    begin(cpu, OP_CALL, target)
    saved = cpu.read_cr(3)
    cpu.mov_to_cr(3, root)
    try:
        answer = cpu.user_call(entry)
    finally:
        cpu.mov_to_cr(3, saved)
    cpu.write_u64(loot, answer if isinstance(answer, int) else 0)


def secure_call(cpu: Cpu, target: int, trustlet_id: int, loot: int) -> None:
    """NT asks the SK whether a trustlet runs (IS_TRUSTLET_RUNNING through ``Vsl*``); the status
    and the SK's answer go to the loot page."""
    begin(cpu, OP_CALL, target)
    from vbsim.nt.kernel import NtKernel

    nt = cpu.kernel()
    if not isinstance(nt, NtKernel) or nt.vsl is None:
        return
    status, outputs = nt.vsl.call(cpu, Service.IS_TRUSTLET_RUNNING, trustlet_id)
    cpu.write_u64(loot, status)
    cpu.write_u64(loot + 8, outputs[0] if outputs else 0)


def normal_call(cpu: Cpu, target: int, loot: int) -> None:
    """The SK asks NT for one physical page (a normal call, vbs-internals §2.5); NT's status and
    the PFN it offers go to the loot page."""
    begin(cpu, OP_CALL, target)
    from vbsim.sk.kernel import SecureKernel

    sk = cpu.kernel()
    if not isinstance(sk, SecureKernel):
        return
    reply = sk.normal_call(cpu, NORMAL_ALLOCATE_PAGES, 1)
    if reply:
        cpu.write_u64(loot, reply[0])
        cpu.write_u64(loot + 8, reply[1] if len(reply) > 1 else 0)


def sk_protect_own_pages(cpu: Cpu, pages: tuple[int, ...]) -> None:
    """The SK takes its new pages (the probe's data, code, loot, table frames) from VTL0."""
    from vbsim.sk.kernel import SecureKernel

    sk = cpu.kernel()
    if isinstance(sk, SecureKernel):
        sk.protect_own_pages(cpu, 0, pages)


def sk_pool_pages(cpu: Cpu, count: int, sink: list[int]) -> None:
    """The SK hands out ``count`` zeroed frames from its own pool (SkAllocatePhysicalPages: the
    pool the loader reserved for it, already withheld from VTL0); their PFNs go to ``sink``."""
    from vbsim.sk.kernel import SecureKernel

    sk = cpu.kernel()
    if isinstance(sk, SecureKernel):
        sink.extend(sk.alloc_frame(cpu) for _ in range(count))


def map_window(cpu: Cpu, window: int, gpa: int, direct_map: int, spares: tuple[int, ...]) -> None:
    """A kernel builds the tables of its probe window in its own address space (CR3), the leaf
    pointing at ``gpa`` (its loot page) until a probe re-points it."""
    flags = WINDOW_FLAGS | int(Pte.NX)
    map_page(cpu, cpu.read_cr(3), window, gpa & ~PAGE_MASK, flags, direct_map, spares)


def grant(
    cpu: Cpu,
    root: int,
    pages: tuple[tuple[int, int], ...],
    direct_map: int,
    spares: tuple[int, ...],
) -> None:
    """A kernel writes user PTEs for ``pages`` ((VA, GPA) pairs) into the address space at
    ``root``, on purpose: NT for its process, the SK for its trustlet."""
    for va, gpa in pages:
        taken = map_page(
            cpu, root, va & ~PAGE_MASK, gpa & ~PAGE_MASK, GRANT_FLAGS, direct_map, spares
        )
        spares = spares[max(taken, 0) :]
