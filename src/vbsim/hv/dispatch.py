"""Hypercall dispatch from a table of call code → handler (OpenVMM's ``dispatcher!`` in spirit).

The dispatcher owns the ABI checks that are the same for every call: CPL (done by the VP: #UD),
the hypercall page being enabled for the calling VTL (#UD otherwise: without it there is no
``vmcall`` entry), the partition privilege a call needs (HV_PARTITION_PRIVILEGE_MASK, reported in
CPUID 0x40000003; ACCESS_DENIED otherwise), the input value, parameter-block alignment and page
crossing, and reading and writing parameter blocks in guest RAM *with the caller's VTL rights*.

TLFS hypercall-interface.md "Alignment Requirements": "The hypervisor will validate that the
calling partition can read from the input page before executing the requested hypercall ... the
specified GPA is mapped and the GPA is marked readable.  If either of these tests fails, the
hypervisor generates a memory intercept message" (and likewise "writable" for output pages).  So a
parameter page the caller's VTL may not access raises a GPA intercept to the higher VTL, whose
handler decides (inject an exception, relax the protection and let the vmcall run again, or
complete it); the hypervisor never reads or writes it on the caller's behalf.  A GPA "not within
the bounds of the GPA space" is HV_STATUS_INVALID_ALIGNMENT (the same page's common status table).
Only when no higher VTL can take the intercept (the highest VTL's own SLAT refused it) does the
model answer ACCESS_DENIED (a model choice: the TLFS does not cover that case).

Rep calls update RCX with the new rep start index ("Rep hypercalls will modify RCX (x64) ... with
the new rep start index", hypercall-interface.md "Volatile Registers").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vbsim.hv import abi, defs, synic
from vbsim.hv.defs import HvCallCode, HvPartitionPrivilege, HvStatus
from vbsim.hv.intercepts import InterceptOutcome, raise_intercept
from vbsim.hw.faults import GuestHang
from vbsim.hw.slat import R, W
from vbsim.hw.translation import Verdict
from vbsim.hw.vp import MAX_RETRIES
from vbsim.hw.x86 import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, Access

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor
    from vbsim.hw.vp import VirtualProcessor

#: Fast calls pass input in RDX, R8 then XMM0..XMM5 (TLFS "XMM fast hypercall input").
FAST_INPUT_MAX = 16 + 6 * 16

#: The partition privilege each call needs (TLFS datatypes/hv_partition_privilege_mask.md:
#: AccessVSM "The partition can use VSM"; AccessVpRegisters "can invoke the hypercalls
#: HvCallSetVpRegisters and HvCallGetVpRegisters"; StartVirtualProcessor "can use
#: HvCallStartVirtualProcessor").  Counting ModifyVtlProtectionMask as "using VSM" is the model's
#: reading.
PRIVILEGE: dict[int, int] = {
    int(HvCallCode.ENABLE_PARTITION_VTL): int(HvPartitionPrivilege.ACCESS_VSM),
    int(HvCallCode.DISABLE_PARTITION_VTL): int(HvPartitionPrivilege.ACCESS_VSM),
    int(HvCallCode.ENABLE_VP_VTL): int(HvPartitionPrivilege.ACCESS_VSM),
    int(HvCallCode.DISABLE_VP_VTL): int(HvPartitionPrivilege.ACCESS_VSM),
    int(HvCallCode.MODIFY_VTL_PROTECTION_MASK): int(HvPartitionPrivilege.ACCESS_VSM),
    int(HvCallCode.GET_VP_REGISTERS): int(HvPartitionPrivilege.ACCESS_VP_REGISTERS),
    int(HvCallCode.SET_VP_REGISTERS): int(HvPartitionPrivilege.ACCESS_VP_REGISTERS),
    int(HvCallCode.START_VIRTUAL_PROCESSOR): int(HvPartitionPrivilege.START_VIRTUAL_PROCESSOR),
}


def _round16(size: int) -> int:
    return (size + 15) & ~15


class _Intercepted:
    """A parameter-block check raised a memory intercept: the higher VTL resolved the vmcall."""


INTERCEPTED = _Intercepted()


@dataclass(slots=True)
class CallContext:
    """What a handler sees: the caller, the decoded input and its parameter blocks."""

    vp: VirtualProcessor
    caller_vtl: int
    call: abi.HypercallInput
    header: bytes
    elements: list[bytes]
    output: bytearray = field(default_factory=bytearray)
    rep_outputs: list[bytes] = field(default_factory=list)


Handler = Callable[["Hypervisor", CallContext], tuple[HvStatus, int]]


@dataclass(frozen=True, slots=True)
class CallSpec:
    code: HvCallCode
    handler: Handler
    header_size: int
    rep_in: int = 0  # size of one rep input element (rep calls only)
    rep_out: int = 0  # size of one rep output element
    out_size: int = 0  # output size of a simple call

    @property
    def is_rep(self) -> bool:
        return self.code in defs.REP_HYPERCALLS


class Dispatcher:
    def __init__(self, hv: Hypervisor) -> None:
        self.hv = hv
        self.table: dict[int, CallSpec] = {}

    def register(self, spec: CallSpec) -> None:
        self.table[int(spec.code)] = spec

    def dispatch(self, vp: VirtualProcessor) -> None:
        """Run the hypercall in the VP's registers and put the result value in RAX."""
        hv = self.hv
        call = abi.decode_input(vp.rcx)
        spec = self.table.get(call.code)
        if spec is None:
            self._finish(vp, call, HvStatus.INVALID_HYPERCALL_CODE, 0)
            return
        needed = PRIVILEGE.get(call.code, 0)
        if needed and not hv.privileges & needed:
            self._finish(vp, call, HvStatus.ACCESS_DENIED, 0)
            return
        status = abi.check_input(call, spec.is_rep)
        if status is not HvStatus.SUCCESS:
            self._finish(vp, call, status, call.rep_start)
            return
        ctx_or_status = self._gather(vp, call, spec)
        if ctx_or_status is INTERCEPTED:
            return
        if isinstance(ctx_or_status, HvStatus):
            self._finish(vp, call, ctx_or_status, call.rep_start, spec.is_rep)
            return
        assert isinstance(ctx_or_status, CallContext)
        ctx = ctx_or_status
        status, done = spec.handler(hv, ctx)
        if not call.fast:
            failed = self._store_output(vp, spec, ctx)
            if failed is not None:
                status = failed
        elif spec.out_size or spec.rep_out:
            self._store_fast_output(vp, spec, ctx)
        self._finish(vp, call, status, done, spec.is_rep)

    def _finish(
        self,
        vp: VirtualProcessor,
        call: abi.HypercallInput,
        status: int,
        reps: int,
        rep_call: bool = False,
    ) -> None:
        vp.rax = abi.result_value(status, reps)
        if rep_call:
            vp.rcx = defs.INPUT_REP_START.insert(call.raw, reps & 0xFFF)
        trace = self.hv.trace
        if trace.on:
            try:
                name = HvCallCode(call.code).name
            except ValueError:
                name = f"0x{call.code:04x}"
            vp.emit(
                "hypercall",
                "hypercall",
                HvStatus(status).name.lower()
                if status in HvStatus._value2member_map_
                else hex(status),
                call=name,
                code=call.code,
                status=int(status),
                reps=reps,
                fast=call.fast,
            )

    def _guest_block(
        self, vp: VirtualProcessor, gpa: int, size: int, need: int
    ) -> HvStatus | _Intercepted | None:
        if gpa & 7 or (gpa & PAGE_MASK) + size > PAGE_SIZE:
            return HvStatus.INVALID_ALIGNMENT
        if not self.hv.ram.backed(gpa, max(size, 1)):
            return HvStatus.INVALID_ALIGNMENT  # "not within the bounds of the GPA space"
        slat = self.hv.slat
        for _ in range(MAX_RETRIES):
            if slat.rights(vp.vtl, gpa >> PAGE_SHIFT) & need:
                return None
            if self.hv.trace.on:
                vp.emit("hypercall", "slat", "intercept", gpa=gpa, need="R" if need == R else "W")
            access = Access.READ if need == R else Access.WRITE
            message = synic.memory_intercept_message(
                self.hv, vp, Verdict(False, gpa, "slat", access), None, synic.INSN_VMCALL
            )
            outcome = raise_intercept(self.hv, vp, message)
            if outcome is InterceptOutcome.UNDELIVERABLE:
                return HvStatus.ACCESS_DENIED
            if outcome is not InterceptOutcome.RETRY:
                return INTERCEPTED  # an exception was injected, or the higher VTL completed it
        raise GuestHang(f"hypercall parameter page 0x{gpa:x} intercepted {MAX_RETRIES} times")

    def _gather(
        self, vp: VirtualProcessor, call: abi.HypercallInput, spec: CallSpec
    ) -> CallContext | HvStatus | _Intercepted:
        if call.varhead_qwords:
            # None of the modelled calls has a variable header (the *Ex variants are not
            # modelled); a non-zero size is malformed input.
            return HvStatus.INVALID_HYPERCALL_INPUT
        header_size = spec.header_size
        reps = call.rep_count if spec.is_rep else 0
        in_size = header_size + reps * spec.rep_in
        if call.fast:
            out_size = spec.out_size + reps * spec.rep_out
            if _round16(in_size) + out_size > FAST_INPUT_MAX:
                # XMM fast output uses the registers the input left free ("if the input
                # parameter block is smaller than 112 bytes (rounded up to the nearest 16 byte
                # aligned chunk), the remaining registers will return hypercall output", TLFS
                # hypercall-interface.md "XMM Fast Hypercall Output"); what does not fit there
                # is malformed.
                return HvStatus.INVALID_HYPERCALL_INPUT
            raw = (
                vp.rdx.to_bytes(8, "little")
                + vp.r8.to_bytes(8, "little")
                + b"".join(x.to_bytes(16, "little") for x in vp.xmm[:6])
            )
            raw = raw[:in_size]
        else:
            checked = self._guest_block(vp, vp.rdx, in_size, R)
            if checked is not None:
                return checked
            out_size = spec.out_size + reps * spec.rep_out
            if out_size:
                checked = self._guest_block(vp, vp.r8, out_size, W)
                if checked is not None:
                    return checked
            raw = self.hv.ram.read(vp.rdx, in_size)
        header = raw[:header_size]
        elements = [
            raw[header_size + i * spec.rep_in : header_size + (i + 1) * spec.rep_in]
            for i in range(call.rep_start, reps)
        ]
        return CallContext(vp, vp.vtl, call, header, elements)

    def _store_fast_output(self, vp: VirtualProcessor, spec: CallSpec, ctx: CallContext) -> None:
        """Write output into RDX, R8, XMM0..XMM5 after the input's 16-byte chunks."""
        reps = ctx.call.rep_count if spec.is_rep else 0
        start = _round16(spec.header_size + reps * spec.rep_in)
        if spec.rep_out:
            offset = start + ctx.call.rep_start * spec.rep_out
            data = b"".join(ctx.rep_outputs)
        else:
            offset, data = start, bytes(ctx.output)[: spec.out_size]
        if not data:
            return
        regs = bytearray(
            vp.rdx.to_bytes(8, "little")
            + vp.r8.to_bytes(8, "little")
            + b"".join(x.to_bytes(16, "little") for x in vp.xmm[:6])
        )
        regs[offset : offset + len(data)] = data
        vp.rdx = int.from_bytes(regs[0:8], "little")
        vp.r8 = int.from_bytes(regs[8:16], "little")
        for i in range(6):
            vp.xmm[i] = int.from_bytes(regs[16 + 16 * i : 32 + 16 * i], "little")

    def _store_output(
        self, vp: VirtualProcessor, spec: CallSpec, ctx: CallContext
    ) -> HvStatus | None:
        data = bytes(ctx.output)
        if spec.rep_out:
            offset = ctx.call.rep_start * spec.rep_out
            data = bytes(offset) + b"".join(ctx.rep_outputs)
            if not ctx.rep_outputs:
                return None
            self.hv.ram.write(vp.r8 + offset, data[offset:])
            return None
        if data:
            self.hv.ram.write(vp.r8, data[: spec.out_size])
        return None
