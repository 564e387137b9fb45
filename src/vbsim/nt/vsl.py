"""NT's ``Vsl*`` secure-call stubs (vbs-internals §2.2).

``VslpEnterIumSecureMode(OperationType, SecureCallCode, SecureThreadCookie, Args)`` fills the 0x68-
byte SECURE_CALL_ARGS, ``HvlSwitchToVsmVtl1`` packs it into RBX and XMM10-15 and VTL-calls through
the hypercall page.  When the SK answers with a normal-call request, NT services it and VTL-calls
again with the reply, until the final result arrives.  NT knows the secure-call numbers of its own
build (the policy's ``build``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vbsim.guest import hvcall
from vbsim.hv import defs
from vbsim.hv.defs import HvMsr
from vbsim.hw.cpu import Cpu
from vbsim.ntstatus import NtStatus
from vbsim.sk import callargs
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.sscn import Service, ServiceTable

if TYPE_CHECKING:
    from vbsim.nt.kernel import NtKernel

#: NT's guest OS ID: Microsoft, Windows NT 10.0 build 26100 (the model's current build; the
#: encoding is hv.defs.guest_os_id, TLFS "Reporting the Guest OS Identity").
NT_GUEST_OS_ID = defs.guest_os_id(10, 0, 26100)
MAX_NORMAL_CALLS = 64

NormalCallHandler = Callable[["NtKernel", Cpu, list[int]], list[int]]


class Vsl:
    def __init__(self, nt: NtKernel) -> None:
        self.nt = nt
        self.table = ServiceTable(nt.build)
        self.normal_calls: dict[int, NormalCallHandler] = {}
        self.hypercall_gpa = 0

    def enable_hypercalls(self, vp: Cpu) -> None:
        if not self.hypercall_gpa:
            self.hypercall_gpa = self.nt.hypercall_code_gpa
        vp.wrmsr(HvMsr.GUEST_OS_ID, NT_GUEST_OS_ID)
        vp.wrmsr(HvMsr.HYPERCALL, self.hypercall_gpa | 1)

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
            handler = self.normal_calls.get(reply.fields[0])
            if vp.tracing:
                vp.emit(
                    "normalcall",
                    "nt-dispatch",
                    "serviced" if handler else "unknown",
                    number=reply.fields[0],
                )
            outputs = (
                handler(self.nt, vp, reply.fields[1:])
                if handler
                else [int(NtStatus.NOT_IMPLEMENTED)]
            )
            request = SecureCallArgs(callargs.OP_NORMAL_REPLY, args.code, args.cookie, outputs)
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
