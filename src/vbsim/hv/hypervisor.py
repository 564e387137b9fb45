"""The hypervisor: what a VP exits to (vmcall, SLAT refusals, secure intercepts, synthetic MSRs).

It holds the partition's VSM state and the per-(VP, VTL) synthetic state, dispatches hypercalls
from a table, switches VTLs (vsm-spec §5.3, §5.4), delivers secure intercepts to the higher VTL
through its SynIC (vsm-spec §6.2), and injects pending events into lower VTLs.

Control transfer onto Python: entering a VTL runs the routine at that VTL's RIP (its resume
point); a VTL's routine leaves by issuing VtlReturn, after which the routine returns and the
lower VTL continues where it made the VTL call.  Instruction-level RIP inside a Python routine is
not modelled: RIP names the routine that is running, and a higher VTL that wants an intercepted
instruction to be skipped moves RIP forward, as it would on hardware (vsm-spec §6.1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import greenlet

from vbsim.hv import defs, msrs, synic
from vbsim.hv.calls import register_all
from vbsim.hv.crash import CrashRegisters, GuestCrash
from vbsim.hv.defs import HvVtlEntryReason
from vbsim.hv.dispatch import Dispatcher
from vbsim.hv.intercepts import InterceptOutcome, raise_intercept
from vbsim.hv.profile import HYPERV, StatusProfile
from vbsim.hv.state import PartitionVsm, VpVtlState
from vbsim.hw.faults import GuestHang, GuestTermination
from vbsim.hw.ram import GuestRam
from vbsim.hw.slat import Slat
from vbsim.hw.translation import Verdict
from vbsim.hw.vp import MAX_RETRIES, VirtualProcessor
from vbsim.hw.x86 import INSN_LEN_VMCALL, Vector
from vbsim.trace import Trace

#: VtlCall / VtlReturn call codes; the whole input value must equal them (vsm-spec §1.3 [hv1]).
_VTL_CALL = int(defs.HvCallCode.VTL_CALL)
_VTL_RETURN = int(defs.HvCallCode.VTL_RETURN)
_HYPERCALL_ENABLE = defs.HYPERCALL_MSR_ENABLE.mask
_TLB_LOCKED = defs.SECCFG_TLB_LOCKED.mask
_VINA_AUTO_RESET = defs.VINA_AUTO_RESET.mask
_EVENT_PENDING = defs.PEV_EVENT_PENDING.mask
_CALL_CODE_MASK = defs.INPUT_CALL_CODE.mask
_ACCESS_VSM = int(defs.HvPartitionPrivilege.ACCESS_VSM)
_ASSIST_GPFN_MASK = defs.VP_ASSIST_GPFN.mask
_ENTRY_REASON_OFFSET = defs.VP_ASSIST_ENTRY_REASON_OFFSET
#: VtlEntryReason as the assist page stores it (u32), per reason.
_REASON_BYTES = {r: int(r).to_bytes(4, "little") for r in HvVtlEntryReason}
_RETURN_RESERVED = defs.VTL_RETURN_CONTROL_RSVD_MASK
_getcurrent = greenlet.getcurrent
_ENTRY_VTL_CALL = HvVtlEntryReason.VTL_CALL
#: The hypervisor CPUID leaves the model answers (their numbers: hv.defs): the highest is
#: 0x40000005, the least an Hv#1 hypervisor provides (the model's 0x40000002 and 0x40000005 read
#: as zero); the vendor is "Microsoft Hv" (TLFS feature-discovery.md).
CPUID_MAX_LEAF = 0x4000_0005
_VENDOR_EBX = int.from_bytes(b"Micr", "little")
_VENDOR_ECX = int.from_bytes(b"osof", "little")
_VENDOR_EDX = int.from_bytes(b"t Hv", "little")
#: HvRegisterVsmCapabilities.HardwareHvptRangeBits: the model's HLAT covers one canonical half of
#: a 48-bit address space (47 bits of VA), the kernel half with HLAT prefix size 1 as the Secure
#: Kernel programs it (vbsim.sk.hvpt).  A model choice: no public source gives the value real
#: hardware reports.
HVPT_RANGE_BITS = 47


class Hypervisor:
    """A Hyper-V-like hypervisor for one partition with VTL0 and VTL1."""

    def __init__(self, ram: GuestRam, slat: Slat, trace: Trace, max_vtl: int = 1) -> None:
        self.ram = ram
        self.slat = slat
        self.trace = trace
        self.vps: list[VirtualProcessor] = []
        #: Per VP and VTL, the execution context (a greenlet: that VTL's own stack) suspended in
        #: its last VTL call or return.  Switching VTLs switches stacks, so a VTL resumes exactly
        #: where it left, as on hardware, and a VTL1 routine can VTL-return to VTL0 mid-way
        #: (normal calls) and continue when VTL0 calls back.
        self.contexts: list[list[greenlet.greenlet | None]] = []
        self.states: list[list[VpVtlState]] = []
        self.partition = PartitionVsm(max_vtl=max_vtl)
        self.dispatcher = Dispatcher(self)
        register_all(self.dispatcher)
        #: Whether the processor model offers MBEC (policy "MBEC present").
        self.mbec_available = True
        #: Whether hardware HVPT (Intel HLAT) is offered through the hvdef control surface:
        #: HvRegisterVsmCapabilities.hardware_hvpt_available, EnablePartitionVtlFlags
        #: .enable_hardware_hvpt, HvRegisterVsmVpSecureVtlConfig.hardware_hvpt_enabled.
        self.hvpt_available = True
        #: Which source's statuses the hypervisor returns where the sources differ (item 11).
        self.profile: StatusProfile = HYPERV
        #: HV_PARTITION_PRIVILEGE_MASK of the partition (CPUID 0x40000003 EAX:EBX, TLFS
        #: feature-discovery.md): what a guest partition that may use VSM holds.
        self.privileges = int(
            defs.HvPartitionPrivilege.ACCESS_SYNIC_REGS
            | defs.HvPartitionPrivilege.ACCESS_HYPERCALL_MSRS
            | defs.HvPartitionPrivilege.ACCESS_VP_INDEX
            | defs.HvPartitionPrivilege.ACCESS_VSM
            | defs.HvPartitionPrivilege.ACCESS_VP_REGISTERS
            | defs.HvPartitionPrivilege.START_VIRTUAL_PROCESSOR
        )
        #: The guest crash enlightenment's registers and what guests notified (vbsim.hv.crash).
        self.crash_registers = CrashRegisters()
        #: HLT exits taken, per VP index: the hypervisor descheduled that VP until an interrupt
        #: (SDM Vol. 3C 25.1.3 "HLT exiting"; its activity state is what
        #: HvRegisterInternalActivityState reports, vbsim.hv.calls.registers).
        self.hlt_exits: dict[int, int] = {}
        #: Set when a pending event was injected into a VP's lower VTL on return (per VP index).
        self.last_injected: dict[int, bool] = {}

    @property
    def capabilities(self) -> int:
        """HvRegisterVsmCapabilities (vsm-spec §4.1).  MbecVtlMask carries the VTL0 bit: the set
        of VTLs whose memory MBEC can split into KX/UX, as OpenHCL reports it
        (``with_mbec_vtl_mask(VtlSet::new().with_vtl(Vtl::Vtl0))``, hardware_cvm/mod.rs) and the
        QEMU VSM PoC does; hardware HVPT with the HLAT range width the model's HLAT covers."""
        value = defs.CAP_DR6_SHARED.mask | defs.CAP_DENY_LOWER_VTL_STARTUP.mask
        if self.mbec_available:
            value = defs.CAP_MBEC_VTL_MASK.insert(value, 0b1)
        if self.hvpt_available:
            value |= defs.CAP_HW_HVPT_AVAILABLE.mask
            value = defs.CAP_HW_HVPT_RANGE_BITS.insert(value, HVPT_RANGE_BITS)
        return value

    def cpuid(self, leaf: int) -> tuple[int, int, int, int]:
        """The hypervisor CPUID leaves the model defines (EAX, EBX, ECX, EDX).  0x40000003
        "Hypervisor Feature Identification": EAX/EBX are bits 31:0 / 63:32 of the partition
        privilege mask (TLFS feature-discovery.md).  Other leaves read as zero."""
        if leaf == defs.CPUID_FEATURES:
            # EDX bit 4: XMM fast hypercall input; bit 10: guest crash MSRs; bit 15: XMM fast
            # hypercall output (TLFS feature-discovery.md, hypercall-interface.md).
            edx = 1 << 4 | defs.CPUID_EDX_GUEST_CRASH_MSRS | 1 << 15
            return self.privileges & 0xFFFF_FFFF, self.privileges >> 32, 0, edx
        if leaf == defs.CPUID_RECOMMENDATIONS:
            # EAX bit 2: "Recommend using hypercall for remote TLB flushes rather than
            # inter-processor interrupts" (TLFS feature-discovery.md): the model's flush
            # hypercalls reach every VP's TLB at once.
            return defs.RECOMMEND_REMOTE_FLUSH_HYPERCALL, 0, 0, 0
        if leaf == defs.CPUID_VENDOR:
            return CPUID_MAX_LEAF, _VENDOR_EBX, _VENDOR_ECX, _VENDOR_EDX
        if leaf == defs.CPUID_INTERFACE:
            return defs.CPUID_HV1_SIGNATURE, 0, 0, 0
        if leaf == 1:
            return 0, 0, defs.CPUID_HYPERVISOR_PRESENT, 0
        return 0, 0, 0, 0

    def cpuid_exit(self, vp: VirtualProcessor, leaf: int) -> tuple[int, int, int, int]:
        """CPUID exits unconditionally under VMX (Intel SDM Vol. 3C 25.1.2): the hypervisor
        answers every leaf the guest asks."""
        return self.cpuid(leaf)

    def hlt_exit(self, vp: VirtualProcessor) -> None:
        """HLT exits to the hypervisor, which deschedules the VP until an interrupt is pending
        for it (the VP's ``halted`` state, which interrupt delivery clears)."""
        self.hlt_exits[vp.index] = self.hlt_exits.get(vp.index, 0) + 1
        if self.trace.on:
            vp.emit("hypervisor", "hlt-exit", "descheduled")

    @property
    def crashes(self) -> list[GuestCrash]:
        """Every CrashNotify so far, in order (the root partition's log)."""
        return self.crash_registers.notified

    # -- wiring ------------------------------------------------------------------------------
    def attach(self, vp: VirtualProcessor) -> None:
        vp.exits = self
        self.vps.append(vp)
        self.states.append([VpVtlState() for _ in range(len(vp.banks))])
        self.contexts.append([None] * len(vp.banks))

    def state(self, vp: VirtualProcessor, vtl: int | None = None) -> VpVtlState:
        return self.states[vp.index][vp.vtl if vtl is None else vtl]

    # -- Exits: vmcall -------------------------------------------------------------------------
    def vmcall(self, vp: VirtualProcessor) -> None:
        st = self.states[vp.index][vp.vtl]
        if not st.hypercall_msr & _HYPERCALL_ENABLE:
            # No hypercall page for this VTL: the guest has no sanctioned vmcall (model: #UD).
            if self.trace.on:
                vp.emit("hypercall", "hypercall-page", "invalid-opcode", code=vp.rcx & 0xFFFF)
            vp.fault(Vector.UD)
            return
        # VtlCall and VtlReturn are recognised by their call code alone; any other control bit
        # makes the call invalid and the hypervisor injects #UD (TLFS vsm.md "A VTL call with an
        # invalid control input value", "VTL return with an invalid control input value";
        # OpenVMM hv1_hypercall imp.rs: "Control must be 0 except for the opcode").
        # Shared GPRs are the Cpu's slots (vbsim.hw.cpu); read them there on this hot path.
        code = vp.cpu.rcx & _CALL_CODE_MASK
        if code == _VTL_CALL:
            self.vtl_call(vp)
        elif code == _VTL_RETURN:
            self.vtl_return(vp)
        else:
            self.dispatcher.dispatch(vp)

    # -- VTL switching (vsm-spec §5.3, §5.4) ---------------------------------------------------
    def next_higher_vtl(self, vp: VirtualProcessor) -> int | None:
        banks = vp.banks
        for vtl in range(vp.vtl + 1, len(banks)):
            if banks[vtl] is not None:
                return vtl
        return None

    def next_lower_vtl(self, vp: VirtualProcessor) -> int | None:
        banks = vp.banks
        for vtl in range(vp.vtl - 1, -1, -1):
            if banks[vtl] is not None:
                return vtl
        return None

    def vtl_call(self, vp: VirtualProcessor) -> None:
        """HvCallVtlCall: control input in RAX must be 0; target the next higher enabled VTL."""
        # The next VTL up is the usual answer; the scan covers VTLs that are not enabled.
        above, banks = vp.vtl + 1, vp.banks
        target = (
            above if above < len(banks) and banks[above] is not None else self.next_higher_vtl(vp)
        )
        allowed = self.privileges & _ACCESS_VSM
        cpu = vp.cpu
        if cpu.rcx != _VTL_CALL or cpu.rax != 0 or target is None or not allowed:
            if self.trace.on:
                vp.emit("vtl", "vtl-call", "invalid-opcode", control=vp.rax)
            vp.fault(Vector.UD)
            return
        vp.p.rip += INSN_LEN_VMCALL
        self.enter_vtl(vp, target, _ENTRY_VTL_CALL)

    def vtl_return(self, vp: VirtualProcessor) -> None:
        """HvCallVtlReturn: bit 0 of RAX is Fast; no return from the lowest VTL (#UD)."""
        cpu = vp.cpu
        control = cpu.rax
        returning = vp.vtl
        below = returning - 1
        lower = below if below >= 0 and vp.banks[below] is not None else self.next_lower_vtl(vp)
        if cpu.rcx != _VTL_RETURN or control & _RETURN_RESERVED or lower is None:
            if self.trace.on:
                vp.emit("vtl", "vtl-return", "invalid-opcode", control=control)
            vp.fault(Vector.UD)
            return
        fast = control & 1
        states = self.states[vp.index]
        st = states[returning]
        # Release TLB locks held by the returning VTL and run the flushes they deferred (§5.7).
        # (Storing a new value under an existing key does not disturb the iteration.)
        secure_config = st.secure_config
        for low, config in secure_config.items():
            if config & _TLB_LOCKED:
                secure_config[low] = config & ~_TLB_LOCKED
                low_state = states[low]
                if low_state.deferred_flush:
                    low_state.deferred_flush = False
                    vp.flush_tlb(low)
        if st.pending_interrupts and self._accepts(vp, returning):
            # "If the RFLAGS.IF bit is cleared to mask interrupts in a given VTL, and the VTL
            # returns (to a lower VTL), the hypervisor will reevaluate any pending interrupts.
            # This will cause an immediate call back to the higher VTL" (TLFS vsm.md "Interrupt
            # Masking and VTL Switches").  The model takes the interrupt at the VtlReturn
            # boundary, as an entry for an interrupt, then completes the return.
            synic.set_entry_reason(self, vp, returning, HvVtlEntryReason.INTERRUPT)
            if self.trace.on:
                vp.emit("interrupt", "vtl-return", "call-back", target_vtl=returning)
            self._deliver_interrupts(vp, returning)
            if vp.vtl != returning:  # pragma: no cover - a handler cannot leave its VTL
                return
        rax = rcx = 0
        if not fast:
            rax, rcx = synic.vtl_return_registers(self, vp, returning)
        from_cpl = vp.p.cpl
        vp.switch_vtl(lower)
        if not fast:
            cpu.rax, cpu.rcx = rax, rcx
        if self.trace.on:
            vp.emit(
                "vtl",
                "vtl-return",
                "switched",
                from_vtl=returning,
                from_cpl=from_cpl,
                to_vtl=lower,
                fast=bool(fast),
            )
        contexts = self.contexts[vp.index]
        here = _getcurrent()
        contexts[returning] = here
        waiting = contexts[lower]
        if waiting is None or waiting is here or waiting.dead:
            return  # nobody is suspended in the lower VTL: it continues on this stack
        waiting.switch()
        # Entered again: this VTL resumes right after its VtlReturn, interrupts first (§5.6).
        if vp.vtl == returning and st.pending_interrupts:
            self._deliver_interrupts(vp, returning)

    def close(self) -> None:
        """Unwind every VTL context still suspended in a VTL call or return.  A suspended
        greenlet whose frames refer to the machine is never garbage-collected, so without this a
        closed machine (and its Python state) would live as long as the process."""
        here = greenlet.getcurrent()
        for contexts in self.contexts:
            for index, context in enumerate(contexts):
                contexts[index] = None
                if context is None or context is here or context.dead or context.parent is None:
                    continue  # (no parent: the host's main stack, which is not ours to unwind)
                context.parent = here
                with contextlib.suppress(GuestTermination):  # a flow may end as it unwinds
                    context.throw(greenlet.GreenletExit)

    def enter_vtl(self, vp: VirtualProcessor, target: int, reason: HvVtlEntryReason) -> None:
        """Switch ``vp`` up to ``target``; the target VTL resumes where it last issued VtlReturn
        (vsm-spec §5.3 step 6) and runs until a VtlReturn comes back down to this VTL."""
        origin, origin_cpl = vp.vtl, vp.p.cpl
        vp.switch_vtl(target)
        st = self.states[vp.index][target]
        # The VP assist page's VtlEntryReason (synic.set_entry_reason, inlined: every entry).
        msr = st.vp_assist_msr
        if msr & 1:  # VP_ASSIST_ENABLE
            page = msr & _ASSIST_GPFN_MASK
            if page + 4096 <= self.ram.size:
                offset = page + _ENTRY_REASON_OFFSET
                self.ram.mm[offset : offset + 4] = _REASON_BYTES[reason]
        if st.vina & _VINA_AUTO_RESET:
            # "The state is automatically cleared on the next entry to the VTL if the auto-reset
            # on VTL entry option is enabled" (TLFS vsm.md "Virtual Interrupt Notification
            # Assist"): on entry, not on the VTL's return.
            synic.set_vina_asserted(self, vp, target, False)
        if self.trace.on:
            vp.emit(
                "vtl",
                "vtl-call" if reason is HvVtlEntryReason.VTL_CALL else "vtl-entry",
                "switched",
                from_vtl=origin,
                from_cpl=origin_cpl,
                to_vtl=target,
                reason=reason.name.lower(),
            )
        contexts = self.contexts[vp.index]
        here = _getcurrent()
        contexts[origin] = here
        context = contexts[target]
        if context is None or context.dead or context is here:
            # ``context is here``: the target VTL last returned from this very stack, which has
            # gone on since (a host entry ran that VTL here, as the fuzzer's harness does), so
            # its continuation is gone; it starts again from its saved RIP, as on a first entry.
            context = greenlet.greenlet(self._first_entry(vp, target))
            contexts[target] = context
        if context.parent is not None:  # the host's main stack has no parent to set
            context.parent = here  # a bugcheck in the higher VTL unwinds the VTL that entered it
        context.switch()
        if vp.vtl >= target:
            raise GuestHang(f"VTL{target} on VP{vp.index} stopped without returning")
        back = self.states[vp.index][vp.vtl]
        if back.pending_event[0] & _EVENT_PENDING or back.pending_interrupts:
            self.after_return(vp)

    def _first_entry(self, vp: VirtualProcessor, vtl: int) -> Callable[[], None]:
        def run() -> None:
            self._deliver_interrupts(vp, vtl)
            vp.call(vp.p.rip)  # the initial context's RIP (EnableVpVtl / StartVirtualProcessor)

        return run

    def after_return(self, vp: VirtualProcessor) -> None:
        """Back in a lower VTL: deliver what the higher VTL queued for it (§5.4 step 8, §6.1)."""
        st = self.states[vp.index][vp.vtl]
        event = st.pending_event[0]
        if event & _EVENT_PENDING:
            st.pending_event[0] = 0
            vector = defs.PEV_VECTOR.extract(event)
            code = (
                defs.PEV_ERROR_CODE.extract(event)
                if defs.PEV_DELIVER_ERROR_CODE.extract(event)
                else None
            )
            if self.trace.on:
                vp.emit("event", "pending-event", "injected", vector=vector, error_code=code)
            self.last_injected[vp.index] = True
            vp.fault(vector, code)
        if st.pending_interrupts:
            self._deliver_interrupts(vp, vp.vtl)

    # -- interrupts (vsm-spec §5.6) ------------------------------------------------------------
    def assert_interrupt(self, vp: VirtualProcessor, vtl: int, vector: int) -> None:
        """An interrupt for ``vtl`` on ``vp``: a higher VTL preempts at once, a lower one waits."""
        if not vp.vtl_enabled(vtl):
            return
        st = self.states[vp.index][vtl]
        st.pending_interrupts.append(vector & 0xFF)
        if vtl > vp.vtl:
            if not self._accepts(vp, vtl):
                # "If the higher VTL is unable to receive the interrupt because of its priority
                # mask (TPR/CR8 on x64 ...), the interrupt is held as pending and the VTL does not
                # switch" (TLFS vsm.md "Interrupts").  RFLAGS.IF does not matter for the switch.
                if self.trace.on:
                    vp.emit("interrupt", "tpr", "pending", target_vtl=vtl, vector=vector)
                return
            self.enter_vtl(vp, vtl, HvVtlEntryReason.INTERRUPT)
        elif vtl == vp.vtl:
            self._deliver_interrupts(vp, vtl)
        else:
            if self.trace.on:
                vp.emit("interrupt", "vtl-priority", "pending", target_vtl=vtl, vector=vector)
            active = self.states[vp.index][vp.vtl]
            if defs.VINA_ENABLED.extract(active.vina):
                synic.assert_vina(self, vp, vp.vtl)

    def _accepts(self, vp: VirtualProcessor, vtl: int) -> bool:
        """Whether ``vtl``'s priority mask lets one of its pending interrupts through: the
        vector's priority class (bits 7:4) must exceed TPR, which CR8 holds in bits 3:0 (SDM Vol.
        3A §10.8.3.1, §10.8.6).  Only TPR/CR8 decides, never RFLAGS.IF (TLFS vsm.md)."""
        bank = vp.banks[vtl]
        pending = self.states[vp.index][vtl].pending_interrupts
        if bank is None or not pending:
            return False
        tpr = bank.cr8 & 0xF
        return tpr == 0 or max(pending) >> 4 > tpr

    def _deliver_interrupts(self, vp: VirtualProcessor, vtl: int) -> None:
        """Deliver, oldest first, the pending interrupts ``vtl``'s TPR lets through; the others
        stay pending (TLFS vsm.md "held as pending")."""
        pending = self.states[vp.index][vtl].pending_interrupts
        while pending and vp.vtl == vtl:
            bank = vp.banks[vtl]
            tpr = 0 if bank is None else bank.cr8 & 0xF
            if tpr == 0:
                vector = pending.popleft()
            else:
                vector = next((v for v in pending if v >> 4 > tpr), -1)
                if vector < 0:
                    return
                pending.remove(vector)
            vp.fault(vector)

    # -- Exits: SLAT refusals and secure intercepts --------------------------------------------
    def memory_violation(self, vp: VirtualProcessor, verdict: Verdict, gva: int | None) -> bool:
        outcome = raise_intercept(self, vp, synic.memory_intercept_message(self, vp, verdict, gva))
        return outcome is InterceptOutcome.COMPLETED

    def intercept_register(self, vp: VirtualProcessor, name: str, value: int) -> bool:
        message = synic.register_intercept_message(self, vp, name, value)
        if message is None:
            return False
        return self._resolve(vp, message)

    def intercept_msr(self, vp: VirtualProcessor, msr: int, value: int | None) -> bool:
        message = synic.msr_intercept_message(self, vp, msr, value)
        if message is None:
            return False
        return self._resolve(vp, message)

    def intercept_io(self, vp: VirtualProcessor, port: int, size: int, value: int | None) -> bool:
        message = synic.io_intercept_message(self, vp, port, size, value)
        if message is None:
            return False
        return self._resolve(vp, message)

    def _resolve(self, vp: VirtualProcessor, message: synic.Intercept) -> bool:
        """Raise the intercept until the higher VTL completes it or injects an exception."""
        for _ in range(MAX_RETRIES):
            outcome = raise_intercept(self, vp, message)
            if outcome is not InterceptOutcome.RETRY:
                return True
        raise GuestHang(f"intercepted {message.what} re-executed {MAX_RETRIES} times")

    # -- Exits: synthetic MSRs -----------------------------------------------------------------
    def synthetic_msr(self, vp: VirtualProcessor, msr: int, value: int | None) -> int | None:
        return msrs.access(self, vp, msr, value)
