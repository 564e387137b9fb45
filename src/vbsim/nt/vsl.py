"""NT's ``Vsl*`` secure-call stubs and its normal-call dispatch (vbs-internals §2.2, §2.5).

``VslpEnterIumSecureMode(OperationType, SecureCallCode, SecureThreadCookie, Args)`` fills the 0x68-
byte SECURE_CALL_ARGS, ``HvlSwitchToVsmVtl1`` packs it into RBX and XMM10-15 and VTL-calls through
the hypercall page.  When the SK answers with a normal-call request, NT services it and VTL-calls
again with the reply, until the final result arrives.  NT knows the secure-call numbers of its own
build (the policy's ``build``).

Normal calls are dispatched from a table in NT's .data, as system services are from
KiServiceTable: ``VslpNormalCallTable`` holds one routine VA per normal-call number, written by
the loader when NT links its handlers (:meth:`Vsl.register`) and read from RAM at every normal
call (:meth:`Vsl.dispatch`); an empty slot, or a number beyond the table, is
STATUS_NOT_IMPLEMENTED.  [model] How ntoskrnl really dispatches normal calls (its
VslpDispatchNormalCall-style switch on the SK's call descriptor) is not publicly laid out
(vbs-internals §2.5: "the full enum was not located"), so the table is the model's: the same
decision — which code answers normal call N — with the data it is made from in RAM, where a K0
write changes it (NT's .data is ordinary kernel memory: KDP protects only what a driver or NT
explicitly protects, such as CI's CiPolicy section, vbs-internals §5.2).

How a request and its answer travel: the dispatcher copies the SK's block, as it captured it from
the shared registers, into this processor's ``VslpNormalCallBlock`` (the SECURE_CALL_ARGS layout
of :mod:`vbsim.sk.callargs`: a header qword, then Field1..Field12; the model's stand-in for the
SKCALL that VslpEnterIumSecureMode keeps on its stack) and calls the routine with the block's VA in
its first argument register.  The request is Field1 = number, Field2.. = the SK's arguments; the
routine writes its answer over the fields — Field1 = NTSTATUS, Field2.. = outputs — and returns the
NTSTATUS in RAX.  The dispatcher VTL-calls back with the fields as the block holds them then.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from vbsim.guest import hvcall
from vbsim.hv import defs
from vbsim.hv.defs import HvMsr
from vbsim.hw import code
from vbsim.hw.cpu import Cpu
from vbsim.nt.kernel import NtKernel
from vbsim.ntstatus import NtStatus
from vbsim.sk import callargs
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.sscn import Service, ServiceTable

#: NT's guest OS ID: Microsoft, Windows NT 10.0 build 26100 (the model's current build; the
#: encoding is hv.defs.guest_os_id, TLFS "Reporting the Guest OS Identity").
NT_GUEST_OS_ID = defs.guest_os_id(10, 0, 26100)
MAX_NORMAL_CALLS = 64

#: [model] NT's normal-call dispatch table (see the module docstring) and its size: the model's
#: normal-call numbers (vbsim.nt.layouts: 1, 2, 0x0102) stay below it.
NORMAL_CALL_TABLE = "VslpNormalCallTable"
NORMAL_CALL_LIMIT = 0x110
#: [model] The per-processor SECURE_CALL_ARGS block a normal call's routine reads and answers in.
NORMAL_CALL_BLOCK = "VslpNormalCallBlock"
BLOCK_SIZE = callargs.ARGS.size
#: Where Field1 (a request's number, an answer's NTSTATUS) sits in the block, and the fields.
FIELDS_OFFSET = 8
_FIELDS = struct.Struct(f"<{callargs.FIELDS}Q")
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF

NormalCallHandler = Callable[["NtKernel", Cpu, list[int]], list[int]]


class Vsl:
    def __init__(self, nt: NtKernel) -> None:
        """Loader time (NT's image is being built): the secure-call numbers of NT's build, and
        the normal-call table and blocks in NT's .data (zeroed: no normal call is linked yet)."""
        self.nt = nt
        self.table = ServiceTable(nt.build)
        self.hypercall_gpa = 0
        self.normal_call_table = nt.variable(NORMAL_CALL_TABLE, NORMAL_CALL_LIMIT * 8).va
        self.normal_call_blocks = nt.variable(NORMAL_CALL_BLOCK, BLOCK_SIZE * nt.processor_count).va

    def enable_hypercalls(self, vp: Cpu) -> None:
        if not self.hypercall_gpa:
            self.hypercall_gpa = self.nt.hypercall_code_gpa
        vp.wrmsr(HvMsr.GUEST_OS_ID, NT_GUEST_OS_ID)
        vp.wrmsr(HvMsr.HYPERCALL, self.hypercall_gpa | 1)

    # -- normal calls ----------------------------------------------------------------------------
    def register(self, number: int, name: str, handler: NormalCallHandler) -> None:
        """Link a normal-call handler (loader time): its code thunk in NT's code pages, its VA in
        the table's slot ``number``."""
        if not 0 <= number < NORMAL_CALL_LIMIT:
            raise ValueError(f"normal call {number:#x} beyond the table ({NORMAL_CALL_LIMIT:#x})")
        routine = f"nt.{name}"
        va = self.nt.install_routine(routine)  # loader time only: raises once NT runs
        code.register(routine, _normal_call_routine(handler))
        self.nt.loader_write_u64(self.normal_call_table + number * 8, va)

    def normal_call_slot(self, number: int) -> int:
        """The VA of the table's slot for ``number`` (0: beyond the table)."""
        if not 0 <= number < NORMAL_CALL_LIMIT:
            return 0
        return self.normal_call_table + number * 8

    def block(self, vp: Cpu) -> int:
        """This processor's normal-call block (VA)."""
        return self.normal_call_blocks + vp.index * BLOCK_SIZE

    def dispatch(self, vp: Cpu, request: SecureCallArgs) -> SecureCallArgs:
        """Answer the SK's normal-call request: the routine in the table's slot, as RAM holds it
        now, run on this processor's block; the reply block to VTL-call back with."""
        fields = request.fields
        number = fields[0] if fields else 0
        slot = self.normal_call_slot(number)
        routine = vp.read_u64(slot) if slot else 0
        if vp.tracing:
            vp.emit(
                "normalcall",
                "nt-dispatch",
                "serviced" if routine else "unknown",
                number=number,
                routine=routine,
            )
        if routine:
            block = self.block(vp)
            vp.write(block, request.pack())
            vp.call(routine, block)
            outputs = request_fields(vp, block)  # the answer, as the routine left it
        else:
            outputs = [int(NtStatus.NOT_IMPLEMENTED)]
        return SecureCallArgs(callargs.OP_NORMAL_REPLY, request.code, request.cookie, outputs)

    # -- secure calls ----------------------------------------------------------------------------
    def call_raw(self, vp: Cpu, args: SecureCallArgs) -> SecureCallArgs:
        """Any block, any code (what a compromised kernel can send): VTL-call and return the
        final reply, servicing normal calls in between."""
        request = args
        for _ in range(MAX_NORMAL_CALLS):
            callargs.load(vp, request)
            hvcall.vtl_call(vp)
            reply = callargs.capture(vp)
            if reply.op != callargs.OP_NORMAL_CALL:
                return reply
            answer = self.dispatch(vp, reply)
            request = SecureCallArgs(answer.op, args.code, args.cookie, answer.fields)
        return SecureCallArgs(
            callargs.OP_INVOKE_SERVICE, args.code, args.cookie, [int(NtStatus.UNSUCCESSFUL)]
        )

    def call(
        self, vp: Cpu, service: Service, *fields: int, cookie: int = 0
    ) -> tuple[int, list[int]]:
        """VslpEnterIumSecureMode(2, SSCN(service), cookie, fields) → (NTSTATUS, outputs)."""
        number = self.table.number.get(service)
        if number is None:
            return int(NtStatus.NOT_SUPPORTED), []
        args = SecureCallArgs(callargs.OP_INVOKE_SERVICE, number, cookie, list(fields))
        reply = self.call_raw(vp, args)
        return reply.fields[0], reply.fields[1:]

    # -- the calls NT makes at boot ------------------------------------------------------------
    def phase3_init(self, vp: Cpu) -> int:
        return self.call(vp, Service.PHASE3_INIT)[0]

    def phase4_init(self, vp: Cpu) -> int:
        return self.call(vp, Service.PHASE4_INIT)[0]

    def start_processor(self, vp: Cpu, index: int, context_pfn: int) -> int:
        return self.call(vp, Service.START_PROCESSOR, index, context_pfn)[0]


def request_fields(vp: Cpu, block: int) -> list[int]:
    """Field1..Field12 of a normal-call block as RAM holds it now (Field1: the number)."""
    return list(_FIELDS.unpack(vp.read(block + FIELDS_OFFSET, _FIELDS.size)))


def write_answer(vp: Cpu, block: int, outputs: list[int]) -> None:
    """Write an answer over a block's fields: Field1 = NTSTATUS, Field2.. = outputs (the rest
    zero; at most twelve values travel)."""
    values = [v & _MASK64 for v in outputs[: callargs.FIELDS]]
    values += [0] * (callargs.FIELDS - len(values))
    vp.write(block + FIELDS_OFFSET, _FIELDS.pack(*values))


_NORMAL_CALL_ROUTINES: dict[NormalCallHandler, Callable[[Cpu, int], int]] = {}


def _normal_call_routine(handler: NormalCallHandler) -> Callable[[Cpu, int], int]:
    """The code of one normal-call handler: it reads the request from the block its first
    argument names, before anything it does can make another secure call on this processor
    (whose normal calls reuse the block), runs the handler with NT's symbols, and writes the
    answer back into the block."""
    routine = _NORMAL_CALL_ROUTINES.get(handler)
    if routine is None:

        def routine(vp: Cpu, block: int) -> int:
            nt = vp.kernel()
            if not isinstance(nt, NtKernel):
                vp.wrong_context("NT code without NT's GS")
            arguments = request_fields(vp, block)[1:]
            outputs = handler(nt, vp, arguments) or [int(NtStatus.UNSUCCESSFUL)]
            write_answer(vp, block, outputs)
            return outputs[0]

        _NORMAL_CALL_ROUTINES[handler] = routine
    return routine
