"""What the Secure Kernel arms at boot, probed from VTL0 ring 0 (K0) after boot.

- SK pages: read-only to VTL0 after phase 1, inaccessible after PHASE3_INIT (§1.1 rows 12-13,
  §1.3); a K0 read through NT's direct map is a secure intercept, no data (§6 A1).
- DenyLowerVtlStartup: VTL0 cannot start a processor itself (§1.1 row 15).
- HyperGuard: CR4.SMEP and LSTAR are pinned after PHASE3 (§5.7, §6 A4).
- An unknown secure-call number bugchecks the SK: VTL0 can DoS VTL1 by design (§6 A10).
"""

from __future__ import annotations

from typing import Any

import pytest

from vbsim.boot import chain
from vbsim.boot.chain import System, boot
from vbsim.guest import hvcall
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hv.defs import HvMapGpaFlags
from vbsim.hw.faults import Bugcheck
from vbsim.hw.x86 import Cr4, Msr
from vbsim.machine import Machine
from vbsim.ntstatus import BugCheck
from vbsim.policy import preset
from vbsim.sk import callargs
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.kernel import SecureKernel
from vbsim.trace import Event, Trace


def booted(name: str = "vbs") -> System:
    system = boot(preset(name))
    assert system.booted and system.vbs_running
    return system


def sk_frames(system: System) -> list[int]:
    assert system.sk_space is not None
    return sorted(set(system.sk_space.frames))


def test_k0_read_of_a_secure_kernel_page_is_intercepted_and_bugchecks() -> None:
    system = booted()
    assert system.machine is not None
    vp = system.machine.bsp
    assert (vp.vtl, vp.cpl, vp.actor) == (0, 0, "nt")
    pfn = sk_frames(system)[len(sk_frames(system)) // 2]
    mark = len(system.trace.events)
    result: list[bytes] = []
    with pytest.raises(Bugcheck) as stop:
        result.append(vp.read(DIRECT_MAP + (pfn << 12), 64))
    assert result == []  # no data reached VTL0
    assert stop.value.vtl == 0  # NT's bugcheck, after the SK injected #GP
    assert stop.value.code == BugCheck.KMODE_EXCEPTION_NOT_HANDLED
    events = system.trace.events[mark:]
    denied = [e for e in events if e.kind == "access" and e.outcome == "denied"]
    assert denied and denied[0].mechanism == "slat" and denied[0].vtl == 0
    intercepts = [e for e in events if e.kind == "intercept"]
    assert any(e.vtl == 1 and e.mechanism == "slat" and e.outcome == "refused" for e in intercepts)
    handled = next(e for e in intercepts if e.vtl == 1)
    assert handled.detail["gpa"] == pfn << 12
    # NT's KeBugCheckEx, the crash it reports to the hypervisor (vbsim.hv.crash), then HLT
    assert [(e.kind, e.vtl) for e in events[-4:]] == [
        ("bugcheck", 0),
        ("crash", 0),
        ("cpu", 0),
        ("hypervisor", 0),  # the HLT exit
    ]


def test_every_secure_kernel_page_is_inaccessible_to_vtl0_after_boot() -> None:
    system = booted()
    assert system.machine is not None and system.machine.slat is not None
    slat = system.machine.slat
    assert all(slat.rights(0, pfn) == 0 for pfn in sk_frames(system))
    # Nothing else of VTL0's RAM lost access: NT's own pages are still fully accessible.
    assert system.nt is not None
    nt_frame = system.nt_space.frames[0]
    assert slat.rights(0, nt_frame) == 0xF


def test_secure_kernel_pages_are_read_only_before_phase3(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between SK phase 1 and PHASE3_INIT, VTL0 may read the SK's pages (row 12), not write them;
    after PHASE3_INIT it may not even read them (row 13)."""
    captured: dict[str, Any] = {}

    class RecordingMachine(Machine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            captured["machine"] = self

    monkeypatch.setattr(chain, "Machine", RecordingMachine)
    trace = Trace(record=True)

    def at_nt_phase0(event: Event) -> None:
        if event.kind != "boot" or event.mechanism != "nt-phase0":
            return
        machine: Machine = captured["machine"]
        sk = next(i for i in machine.ram.images.values() if isinstance(i, SecureKernel))
        assert machine.slat is not None
        frames = sorted(set(sk.image_pfns))  # what the loader handed the SK
        captured["frames"] = frames
        captured["rights"] = {pfn: machine.slat.rights(0, pfn) for pfn in frames}
        # NT (VTL0 ring 0, phase 0) reads one of them through its direct map.
        vp = machine.bsp
        assert (vp.vtl, vp.cpl) == (0, 0)
        pfn = frames[len(frames) // 2]
        captured["read"] = vp.read(DIRECT_MAP + (pfn << 12), 64)
        captured["ram"] = machine.ram.read(pfn << 12, 64)

    trace.listen(at_nt_phase0)
    system = boot(preset("vbs"), trace=trace)
    assert system.booted and system.machine is not None and system.machine.slat is not None
    readable = int(HvMapGpaFlags.READABLE)
    assert set(captured["rights"].values()) == {readable}
    assert captured["read"] == captured["ram"]
    slat = system.machine.slat
    assert all(slat.rights(0, pfn) == 0 for pfn in captured["frames"])


def test_vtl0_cannot_start_a_processor_itself() -> None:
    """DenyLowerVtlStartup: NT calling HvCallStartVirtualProcessor gets ACCESS_DENIED."""
    system = booted()
    assert system.nt is not None and system.machine is not None
    nt, vp = system.nt, system.machine.bsp
    in_va, in_gpa = nt.alloc_kernel_page(vp.cpu)
    out_va, out_gpa = nt.alloc_kernel_page(vp.cpu)
    pages = hvcall.ParamPages(in_va, in_gpa, out_va, out_gpa)
    for index in range(len(system.machine.vps)):
        result = hvcall.start_virtual_processor(vp, pages, index, 0, nt.ap_context(index))
        assert result.status_name == "ACCESS_DENIED"
    denials = system.trace.find("vsm", "deny-lower-vtl-startup")
    assert len(denials) == len(system.machine.vps) and all(e.vtl == 0 for e in denials)


def test_hyperguard_clearing_smep_bugchecks() -> None:
    system = booted()
    assert system.machine is not None
    vp = system.machine.bsp
    cr4 = vp.p.cr4
    assert cr4 & Cr4.SMEP
    with pytest.raises(Bugcheck) as stop:
        vp.mov_to_cr(4, cr4 & ~int(Cr4.SMEP))
    assert stop.value.code == BugCheck.HYPERGUARD_VIOLATION == 0x18C
    assert stop.value.vtl == 1
    violation = system.trace.find("hyperguard")[-1]
    assert violation.outcome == "violation" and violation.detail["register"] == "CR4"
    assert system.machine.bsp.banks[0] is not None
    assert system.machine.bsp.banks[0].cr4 & Cr4.SMEP  # the write never took effect


def test_hyperguard_hooking_lstar_bugchecks() -> None:
    system = booted()
    assert system.machine is not None and system.nt is not None
    vp = system.machine.bsp
    trusted = vp.rdmsr(Msr.LSTAR)
    assert trusted == system.nt.syscall_entry
    hook = system.nt_space.install("nt.KiPageFault")  # any other kernel address
    with pytest.raises(Bugcheck) as stop:
        vp.wrmsr(Msr.LSTAR, hook)
    assert stop.value.code == BugCheck.HYPERGUARD_VIOLATION
    assert system.trace.find("hyperguard")[-1].detail["register"] == "LSTAR"
    bank = system.machine.bsp.banks[0]
    assert bank is not None and bank.lstar == trusted


def test_hyperguard_allows_rewriting_the_trusted_values() -> None:
    """Writing back the value recorded at PHASE3 is emulated (an AP loading the BSP's IDT); a
    CR4 write that changes no intercepted bit never leaves VTL0 (vsm-spec §4.1)."""
    system = booted()
    assert system.machine is not None and system.nt is not None
    vp = system.machine.bsp
    lstar, cr4 = vp.rdmsr(Msr.LSTAR), vp.p.cr4
    mark = len(system.trace.find("hyperguard"))
    vp.wrmsr(Msr.LSTAR, lstar)
    vp.lidt(*system.nt.idt)
    vp.mov_to_cr(4, cr4)
    vp.mov_to_cr(4, cr4 ^ int(Cr4.PGE))  # PGE is outside HyperGuard's CR4 mask
    decisions = system.trace.find("hyperguard")[mark:]
    assert [(e.detail["register"], e.outcome) for e in decisions] == [
        ("LSTAR", "allowed"),
        ("IDTR", "allowed"),
    ]
    assert vp.rdmsr(Msr.LSTAR) == lstar and vp.p.cr4 == cr4 ^ int(Cr4.PGE)
    assert (vp.p.idtr_base, vp.p.idtr_limit) == system.nt.idt
    assert (vp.vtl, vp.cpl) == (0, 0)
    assert not system.trace.find("bugcheck")


@pytest.mark.parametrize("code", [0x7777, 0xFFFF, 0xDEAD])
def test_unknown_secure_call_number_bugchecks_the_secure_kernel(code: int) -> None:
    system = booted()
    assert system.machine is not None and system.nt is not None and system.nt.vsl is not None
    assert code not in system.nt.vsl.table.service
    with pytest.raises(Bugcheck) as stop:
        system.nt.vsl.call_raw(
            system.machine.bsp.cpu, SecureCallArgs(callargs.OP_INVOKE_SERVICE, code, 0, [])
        )
    assert stop.value.code == BugCheck.SECURE_KERNEL_ERROR == 0x18B
    assert stop.value.vtl == 1
    unknown = system.trace.find("securecall", "sscn")[-1]
    assert unknown.outcome == "unknown" and unknown.detail["code"] == code
