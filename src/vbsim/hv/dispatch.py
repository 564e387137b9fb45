"""Hypercall dispatch from a table of call code → handler (OpenVMM's ``dispatcher!`` in spirit).

The dispatcher owns the ABI checks that are the same for every call: CPL (done by the VP: #UD),
the hypercall page being enabled for the calling VTL (#UD otherwise: without it there is no
``vmcall`` entry), the input value, parameter-block alignment and page crossing, and reading and
writing parameter blocks in guest RAM *with the caller's VTL rights* — the hypervisor must not
become a confused deputy that reads or writes, on VTL0's behalf, memory VTL0 may not touch (a
model choice; the TLFS does not say which status the real hypervisor returns, so ACCESS_DENIED).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vbsim.hv import abi, defs
from vbsim.hv.defs import HvCallCode, HvStatus
from vbsim.hw.slat import R, W
from vbsim.hw.x86 import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor
    from vbsim.hw.vp import VirtualProcessor

#: Fast calls pass input in RDX, R8 then XMM0..XMM5 (TLFS "XMM fast hypercall input").
FAST_INPUT_MAX = 16 + 6 * 16


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
        status = abi.check_input(call, spec.is_rep)
        if status is not HvStatus.SUCCESS:
            self._finish(vp, call, status, call.rep_start)
            return
        ctx_or_status = self._gather(vp, call, spec)
        if isinstance(ctx_or_status, HvStatus):
            self._finish(vp, call, ctx_or_status, call.rep_start)
            return
        ctx = ctx_or_status
        status, done = spec.handler(hv, ctx)
        if not call.fast:
            failed = self._store_output(vp, spec, ctx)
            if failed is not None:
                status = failed
        self._finish(vp, call, status, done)

    def _finish(
        self, vp: VirtualProcessor, call: abi.HypercallInput, status: int, reps: int
    ) -> None:
        vp.rax = abi.result_value(status, reps)
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

    def _guest_block(self, vp: VirtualProcessor, gpa: int, size: int, need: int) -> HvStatus | None:
        if gpa & 7 or (gpa & PAGE_MASK) + size > PAGE_SIZE:
            return HvStatus.INVALID_ALIGNMENT
        if not self.hv.ram.backed(gpa, max(size, 1)):
            return HvStatus.INVALID_PARAMETER
        slat = self.hv.slat
        if not slat.rights(vp.vtl, gpa >> PAGE_SHIFT) & need:
            if self.hv.trace.on:
                vp.emit("hypercall", "slat", "denied", gpa=gpa, need="R" if need == R else "W")
            return HvStatus.ACCESS_DENIED
        return None

    def _gather(
        self, vp: VirtualProcessor, call: abi.HypercallInput, spec: CallSpec
    ) -> CallContext | HvStatus:
        if call.varhead_qwords:
            # None of the modelled calls has a variable header (the *Ex variants are not
            # modelled); a non-zero size is malformed input.
            return HvStatus.INVALID_HYPERCALL_INPUT
        header_size = spec.header_size
        reps = call.rep_count if spec.is_rep else 0
        in_size = header_size + reps * spec.rep_in
        if call.fast:
            if spec.out_size or spec.rep_out or in_size > FAST_INPUT_MAX:
                # The model has no XMM fast *output*; calls with output must be memory-based.
                return HvStatus.INVALID_HYPERCALL_INPUT
            raw = (
                vp.rdx.to_bytes(8, "little")
                + vp.r8.to_bytes(8, "little")
                + b"".join(x.to_bytes(16, "little") for x in vp.xmm[:6])
            )
            raw = raw[:in_size]
        else:
            status = self._guest_block(vp, vp.rdx, in_size, R)
            if status is not None:
                return status
            out_size = spec.out_size + reps * spec.rep_out
            if out_size:
                status = self._guest_block(vp, vp.r8, out_size, W)
                if status is not None:
                    return status
            raw = self.hv.ram.read(vp.rdx, in_size)
        header = raw[:header_size]
        elements = [
            raw[header_size + i * spec.rep_in : header_size + (i + 1) * spec.rep_in]
            for i in range(call.rep_start, reps)
        ]
        return CallContext(vp, vp.vtl, call, header, elements)

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
