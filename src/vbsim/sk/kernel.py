"""The Secure Kernel's core: its address space, entry, trust timeline and secure-call dispatch.

vbs-internals §1.1 rows 11-15 and §2.2: the SK is entered through VTL calls (entry reason
VtlCall: a secure call from NT) and interrupts (SINT0: secure intercepts).  It trusts VTL0 until
PHASE3_INIT and treats every VTL0 input as hostile from PHASE4_INIT on.  An unknown secure-call
number bugchecks.  Services are looked up in the build's table (``sscn``) and dispatched from a
table of handlers that the service modules register.

A service handler is ``(sk, vp, args) -> Reply``, or a generator that ``yield``s
:class:`NormalCall` requests: the SK then returns to VTL0 with a normal-call request and resumes
the generator when NT VTL-calls back with the reply (vbs-internals §2.5).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from vbsim.guest import hvcall
from vbsim.guest.address_space import KernelSpace
from vbsim.hv import defs
from vbsim.hv.calls.context import encode_context
from vbsim.hv.defs import HvMsr, HvRegisterName, HvVtlEntryReason
from vbsim.hw.code import guest_code
from vbsim.hw.faults import Bugcheck, ThreadTerminated
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import Msr, Rflags
from vbsim.ntstatus import BugCheck, NtStatus
from vbsim.sk import callargs
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.sscn import Service, ServiceTable

if TYPE_CHECKING:
    from vbsim.machine import Machine
    from vbsim.policy import Policy

SINT0_VECTOR = 0x31
GUEST_OS_ID = 0x0000_0A00_6580_0000  # Microsoft vendor ID 1, OS Windows NT, version 10.0
#: First secure handle value (vbs-internals §2.3: handles around 0x1_4000_0000).
FIRST_HANDLE = 0x1_4000_0000


class Phase(Enum):
    LOADED = "loaded"  # image in reserved memory, not entered yet
    PHASE1 = "phase1"  # initialised in VTL1; trusts VTL0
    PHASE3 = "phase3"  # own pages locked away; trusted register values recorded
    PHASE4 = "phase4"  # every VTL0 input is hostile


@dataclass(slots=True)
class Reply:
    status: int = NtStatus.SUCCESS
    outputs: list[int] = field(default_factory=list)


@dataclass(slots=True)
class NormalCall:
    """A request from the SK to NT (vbs-internals §2.5); fields travel in the argument block."""

    number: int
    args: list[int] = field(default_factory=list)


ServiceResult = Reply | Generator[NormalCall, SecureCallArgs, Reply]
Handler = Callable[["SecureKernel", VirtualProcessor, SecureCallArgs], ServiceResult]


@dataclass
class SkObject:
    """An object in the SK handle table (SKPROCESS, SECURE_IMAGE, secure allocation ...)."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProcessorPages:
    assist_gpa: int
    sim_gpa: int


class SecureKernel:
    def __init__(self, machine: Machine, policy: Policy) -> None:
        self.machine = machine
        self.policy = policy
        self.trace = machine.trace
        self.space = KernelSpace(machine.ram, "securekernel")
        in_va, in_gpa = self.space.alloc_data()
        out_va, out_gpa = self.space.alloc_data()
        self.params = hvcall.ParamPages(in_va, in_gpa, out_va, out_gpa)
        _, self.hypercall_gpa = self.space.alloc_data()
        self.processors = []
        for _ in machine.vps:
            _, assist = self.space.alloc_data()
            _, sim = self.space.alloc_data()
            self.processors.append(ProcessorPages(assist, sim))
        self.prcb_va, _ = self.space.alloc_data(1)
        for index in range(len(machine.vps)):
            machine.ram.place_image(1, self.processor_block(index), self)
        self.idt = self.space.build_idt({SINT0_VECTOR: "sk.sint0"}, default="sk.exception")
        self.entry_va = self.space.install("sk.entry")
        self.table = ServiceTable(policy.build)
        self.handlers: dict[Service, Handler] = {}
        self.phase = Phase.LOADED
        self.ready: list[bool] = [False] * len(machine.vps)
        self.handles: dict[int, SkObject] = {}
        self._next_handle = FIRST_HANDLE + 4  # +0 is "Secure System" (vbs-internals §2.3)
        #: VTL0 register values the SK trusts after PHASE3 (HyperGuard, vbs-internals §5.7).
        self.trusted: dict[int, int] = {}
        #: Per VP, the services suspended in a normal call, innermost last (a secure call NT makes
        #: while serving a normal call nests inside the outer one).
        self.pending: dict[int, list[Generator[NormalCall, SecureCallArgs, Reply]]] = {}
        #: Extensions (HVCI, KDP, HVPT, IUM) keep their state here, keyed by name.
        self.ext: dict[str, Any] = {}
        self.intercepts: list[dict[str, int]] = []
        #: Pages the SK took from VTL0 (its page-identity knowledge: its own image and data,
        #: trustlet memory ...).  Secure-call inputs may never name one of them.
        self.vtl1_pages: set[int] = set(self.space.frames)
        #: Functions run at the end of phase 1 (HVCI's initial SLAT, ...), registered by modules.
        self.phase1_hooks: list[Callable[[SecureKernel, VirtualProcessor], None]] = []
        #: The resume-thread operation (IUM); set by the IUM service module.
        self.resume_thread: Handler | None = None
        from vbsim.sk.ium import keys

        keys.provision(self)
        self.syscall_entry = self.space.install("sk.KiSystemServiceStart")
        from vbsim.sk.services import register_all

        register_all(self)

    # -- loader side ---------------------------------------------------------------------------
    def processor_block(self, index: int) -> int:
        """The VA of VP ``index``'s SK processor block (64 bytes each)."""
        return self.prcb_va + index * 0x40

    def context(self, index: int = 0) -> bytes:
        """HV_INITIAL_VP_CONTEXT for EnableVpVtl: VTL1 starts at the SK entry, GS base on the
        VP's processor block."""
        state = self.space.initial_state(self.entry_va, idt=self.idt)
        state.gs_base = self.processor_block(index)
        return encode_context(state)

    def alloc_handle(self, obj: SkObject) -> int:
        handle = self._next_handle
        self._next_handle += 4
        self.handles[handle] = obj
        return handle

    def lookup(self, handle: int, kind: str) -> SkObject | None:
        """SkobReferenceObjectByHandle: the object, only if it has the expected type."""
        obj = self.handles.get(handle)
        return obj if obj is not None and obj.kind == kind else None

    def emit(
        self, vp: VirtualProcessor, kind: str, mechanism: str, outcome: str, **detail: Any
    ) -> None:
        if self.trace.on:
            vp.emit(kind, mechanism, outcome, **detail)

    def bugcheck(self, vp: VirtualProcessor, code: BugCheck, *params: int) -> None:
        if vp.cpl != 0:  # KeBugCheckEx's privileged instructions fault outside ring 0
            vp.wrong_context("KeBugCheckEx at CPL3")
        self.emit(vp, "bugcheck", "securekernel", code.name, code=int(code), params=list(params))
        raise Bugcheck(int(code), code.name, 1, *params)

    # -- processor bring-up --------------------------------------------------------------------
    def init_processor(self, vp: VirtualProcessor) -> None:
        """Per-VP VTL1 setup (LVBS mshv_vsm_vtl1.c; vbs-internals §1.1 row 12 on the BSP)."""
        pages = self.processors[vp.index]
        vp.wrmsr(HvMsr.GUEST_OS_ID, GUEST_OS_ID)
        vp.wrmsr(HvMsr.HYPERCALL, self.hypercall_gpa | 1)
        vp.wrmsr(HvMsr.VP_ASSIST_PAGE, pages.assist_gpa | 1)
        vp.wrmsr(HvMsr.SIMP, pages.sim_gpa | 1)
        vp.wrmsr(HvMsr.SINT0, SINT0_VECTOR)
        vp.wrmsr(HvMsr.SCONTROL, 1)
        mbec = self.policy.mbec or self.policy.hvci  # HVCI without MBEC: emulated (RUM)
        secure_config = defs.SECCFG_MBEC_ENABLED.mask if mbec else 0
        registers = [(int(HvRegisterName.VSM_VP_SECURE_CONFIG_VTL0), secure_config)]
        if vp.index == 0:
            # With HVCI no VTL0 page is kernel-executable unless validated: the default mask every
            # page starts with is R|W|UX (vsm-spec §3.4 DefaultVtlProtectionMask, HV_MAP_GPA order).
            default = 0xB if self.policy.hvci else 0xF
            self.ext["vtl0_default_mask"] = default
            config = (
                defs.PCONFIG_ENABLE_VTL_PROTECTION.mask
                | defs.PCONFIG_DEFAULT_VTL_PROTECTION_MASK.insert(0, default)
                | defs.PCONFIG_ZERO_MEMORY_ON_RESET.mask
                | defs.PCONFIG_DENY_LOWER_VTL_STARTUP.mask
            )
            registers.insert(0, (int(HvRegisterName.VSM_PARTITION_CONFIG), config))
        result = hvcall.set_vp_registers(vp, self.params, registers)
        if not result.ok:
            self.bugcheck(vp, BugCheck.SECURE_KERNEL_ERROR, 1, result.status)
        from vbsim.sk import hyperguard

        hyperguard.register_intercepts(self, vp)
        # VTL1's own system-call entry: IUM code enters the SK with ``syscall`` (no hypervisor
        # involved, vbs-internals §2.6).  These MSRs are VTL1's private copies.
        vp.wrmsr(Msr.LSTAR, self.syscall_entry)
        vp.wrmsr(Msr.STAR, (0x0023 << 48) | (0x0010 << 32))
        vp.wrmsr(Msr.SFMASK, int(Rflags.TF | Rflags.IF | Rflags.DF | Rflags.AC))
        if vp.index == 0:
            self.phase1(vp)
        self.ready[vp.index] = True
        self.emit(vp, "sk", "init-processor", "ready", vp_index=vp.index)

    def phase1(self, vp: VirtualProcessor) -> None:
        """SkmiProtectSecureKernelPages and friends (vbs-internals §1.1 row 12)."""
        self.protect_own_pages(vp, int(defs.HvMapGpaFlags.READABLE))
        for hook in self.phase1_hooks:
            hook(self, vp)
        self.phase = Phase.PHASE1
        self.emit(vp, "boot", "sk-phase1", "done", frames=len(set(self.space.frames)))

    def protect_own_pages(self, vp: VirtualProcessor, flags: int) -> None:
        self.vtl1_pages.update(self.space.frames)
        gpns = sorted(set(self.space.frames))
        result = hvcall.modify_vtl_protection_mask(vp, self.params, gpns, flags)
        if not result.ok:
            self.bugcheck(vp, BugCheck.SECURE_KERNEL_ERROR, 2, result.status)

    def vtl0_page(self, pfn: int) -> bool:
        """Whether ``pfn`` is RAM that belongs to VTL0 (not the SK's, not a trustlet's)."""
        return 0 < pfn < self.machine.ram.pages and pfn not in self.vtl1_pages

    def set_vtl0_rights(self, vp: VirtualProcessor, gpns: list[int], flags: int) -> bool:
        """The only way any VTL0 SLAT right changes: a hypercall issued here, in VTL1."""
        if not gpns:
            return True
        if self.policy.hvci and flags & 0x2 and flags & 0x4:
            # HVCI's invariant, enforced at the one place every SLAT change passes: a VTL0 page is
            # never writable and kernel-executable at once (vbs-internals §5.1).
            flags &= ~0x4
            self.emit(vp, "hvci", "hvci.w^x", "kx-stripped", pages=len(gpns))
        return hvcall.modify_vtl_protection_mask(vp, self.params, gpns, flags).ok

    # -- secure calls --------------------------------------------------------------------------
    def secure_call(self, vp: VirtualProcessor) -> None:
        raw = callargs.from_registers(vp)  # captured: VTL0 cannot change it from here on
        args = SecureCallArgs.unpack(raw)
        result: Reply | NormalCall
        if args.op == callargs.OP_NORMAL_REPLY:
            stack = self.pending.get(vp.index)
            if not stack:
                result = Reply(NtStatus.INVALID_PARAMETER)
            else:
                result = self._advance(vp, stack.pop(), args)
        elif args.op == callargs.OP_INVOKE_SERVICE:
            service = self.table.service.get(args.code)
            if service is None:
                self.emit(vp, "securecall", "sscn", "unknown", code=args.code)
                self.bugcheck(vp, BugCheck.SECURE_KERNEL_ERROR, 0x10, args.code)
                return
            handler = self.handlers.get(service)
            if self.trace.on:
                self.emit(
                    vp,
                    "securecall",
                    "dispatch",
                    "entered",
                    service=service.value,
                    code=args.code,
                    phase=self.phase.value,
                )
            if handler is None:
                result = Reply(NtStatus.NOT_IMPLEMENTED)
            else:
                outcome = handler(self, vp, args)
                result = outcome if isinstance(outcome, Reply) else self._advance(vp, outcome, None)
        elif args.op == callargs.OP_RESUME_THREAD and self.resume_thread is not None:
            outcome = self.resume_thread(self, vp, args)
            result = outcome if isinstance(outcome, Reply) else self._advance(vp, outcome, None)
        else:
            self.emit(vp, "securecall", "operation-type", "unknown", op=args.op)
            self.bugcheck(vp, BugCheck.SECURE_KERNEL_ERROR, 0x11, args.op)
            return
        if isinstance(result, NormalCall):
            reply = SecureCallArgs(
                callargs.OP_NORMAL_CALL, args.code, args.cookie, [result.number, *result.args]
            )
            self.emit(vp, "normalcall", "request", "sent", number=result.number)
        else:
            reply = SecureCallArgs(
                callargs.OP_INVOKE_SERVICE, args.code, args.cookie, [result.status, *result.outputs]
            )
            if self.trace.on:
                status_name = NtStatus.name_of(result.status)
                self.emit(vp, "securecall", "dispatch", status_name, code=args.code)
        callargs.clear_registers(vp)
        callargs.to_registers(vp, reply.pack())

    def normal_call(self, vp: VirtualProcessor, number: int, *args: int) -> list[int] | None:
        """Ask NT for a service and wait for the answer (vbs-internals §2.5).

        The request leaves in the shared argument registers (everything else cleared), VTL1
        VTL-returns, and this VTL resumes right here when NT VTL-calls back with the reply.  The
        reply is untrusted input: callers validate every value.  None if NT answered with
        something that is not a normal-call reply."""
        request = SecureCallArgs(callargs.OP_NORMAL_CALL, 0, 0, [number, *args])
        callargs.clear_registers(vp)
        callargs.to_registers(vp, request.pack())
        self.emit(vp, "normalcall", "request", "sent", number=number)
        hvcall.vtl_return(vp)
        reply = SecureCallArgs.unpack(callargs.from_registers(vp))
        if reply.op != callargs.OP_NORMAL_REPLY:
            self.emit(vp, "normalcall", "reply", "malformed", op=reply.op)
            return None
        return reply.fields

    def _advance(
        self,
        vp: VirtualProcessor,
        generator: Generator[NormalCall, SecureCallArgs, Reply],
        reply: SecureCallArgs | None,
    ) -> Reply | NormalCall:
        try:
            request = next(generator) if reply is None else generator.send(reply)
        except StopIteration as done:
            value = done.value
            return value if isinstance(value, Reply) else Reply(NtStatus.UNSUCCESSFUL)
        self.pending.setdefault(vp.index, []).append(generator)
        return request


def _sk(vp: VirtualProcessor) -> SecureKernel:
    sk = vp.kernel()
    if not isinstance(sk, SecureKernel):
        vp.wrong_context("Secure Kernel code without the Secure Kernel's GS")
    return sk


@guest_code("sk.entry")
def _entry(vp: VirtualProcessor) -> None:
    """VTL1's dispatcher loop on one VP: initialise, then return to VTL0 and serve each entry.

    Every VTL entry resumes right after the ``vtl_return`` below (vsm-spec §5.3 step 6); pending
    interrupts (secure intercepts on SINT0) have been delivered through the IDT by then."""
    sk = _sk(vp)
    vp.actor = "securekernel"
    sk.init_processor(vp)
    assist = (
        sk.space.phys_va(sk.processors[vp.index].assist_gpa) + defs.VP_ASSIST_ENTRY_REASON_OFFSET
    )
    while True:
        hvcall.vtl_return(vp)
        if vp.read_u32(assist) == HvVtlEntryReason.VTL_CALL:
            sk.secure_call(vp)


@guest_code("sk.sint0")
def _sint0(vp: VirtualProcessor, vector: int, error_code: int) -> None:
    from vbsim.sk import intercepts

    intercepts.handle(_sk(vp), vp)


@guest_code("sk.exception")
def _exception(vp: VirtualProcessor, vector: int, error_code: int) -> None:
    """A fault in IUM user mode ends the trustlet's thread; one in the Secure Kernel is fatal."""
    sk = _sk(vp)
    if vp.interrupted_cpl == 3:
        sk.emit(vp, "ium", "exception-dispatch", "thread-terminated", vector=vector,
                error_code=error_code, cr2=vp.cr2)  # fmt: skip
        raise ThreadTerminated(f"IUM exception {vector} at 0x{vp.cr2:x}", vector, error_code)
    sk.bugcheck(vp, BugCheck.SECURE_KERNEL_ERROR, 0x20, vector, error_code, vp.cr2)
