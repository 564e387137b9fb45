"""Boot-time secure services: PHASE3_INIT, PHASE4_INIT, START_PROCESSOR (vbs-internals §1.1
rows 13-15) and the model's NULL service (for the benchmark)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.guest import hvcall
from vbsim.hv import defs
from vbsim.hw.x86 import PAGE_SHIFT
from vbsim.ntstatus import NtStatus
from vbsim.sk import hyperguard
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.kernel import Phase, Reply, SecureKernel
from vbsim.sk.layouts import Config
from vbsim.sk.services import kcfg
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu


def null(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    return Reply()


def phase3_init(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    """NT phase 0: the SK's pages become inaccessible to VTL0; trusted values are recorded."""
    if sk.phase(vp) is not Phase.PHASE1:
        return Reply(NtStatus.INVALID_DEVICE_STATE)
    sk.protect_own_pages(vp, 0)
    kcfg.phase3(sk, vp)  # "applies a read-only protection to the kernel CFG bitmaps" (WI7-P2)
    hyperguard.record_trusted(sk, vp)
    sk.set_phase(vp, Phase.PHASE3)
    sk.emit(vp, "boot", "phase3-init", "done", trusted=len(sk.trusted(vp)))
    return Reply()


def phase4_init(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    """NT phase 1: from here every VTL0 input is hostile (vbs-internals §1.1 row 14)."""
    if sk.phase(vp) is not Phase.PHASE3:
        return Reply(NtStatus.INVALID_DEVICE_STATE)
    sk.set_phase(vp, Phase.PHASE4)
    sk.emit(vp, "boot", "phase4-init", "done")
    return Reply()


def start_processor(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    """Field1: VP index; Field2: PFN of a VTL0 page holding the AP's HV_INITIAL_VP_CONTEXT.

    The context is captured (copied into VTL1) and the PFN must be VTL0 memory.  The SK enables
    VTL1 on the AP and starts it; VTL1 runs first on the new VP (vbs-internals §1.1 row 15)."""
    index, pfn = args.fields[0], args.fields[1]
    # The SK knows how many processors the partition has (its configuration) and which it has
    # brought up (its state block); it never looks at another processor.
    if not 0 < index < sk.config(vp, Config.VPS) or sk.started(vp, index):
        return Reply(NtStatus.INVALID_PARAMETER)
    if not sk.vtl0_page(vp, pfn):
        sk.emit(vp, "securecall", "pfn-check", "refused", pfn=pfn)
        return Reply(NtStatus.INVALID_PARAMETER)
    context = vp.read(sk.space.phys_va(pfn << PAGE_SHIFT), defs.INITIAL_VP_CONTEXT.size)
    result = hvcall.enable_vp_vtl(vp, sk.params, 1, sk.context(index), vp_index=index)
    if not result.ok:
        return Reply(NtStatus.UNSUCCESSFUL, [result.status])
    result = hvcall.start_virtual_processor(vp, sk.params, index, 0, context)
    if not result.ok:
        return Reply(NtStatus.UNSUCCESSFUL, [result.status])
    return Reply()


def register(sk: SecureKernel) -> None:
    sk.handlers[Service.NULL] = null
    sk.handlers[Service.PHASE3_INIT] = phase3_init
    sk.handlers[Service.PHASE4_INIT] = phase4_init
    sk.handlers[Service.START_PROCESSOR] = start_processor
