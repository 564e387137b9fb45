"""The boot order of vbs-internals §1.1, read from the trace, with and without VBS."""

from __future__ import annotations

import pytest

from vbsim.boot.chain import System, boot
from vbsim.guest import hvcall
from vbsim.hw.faults import Bugcheck
from vbsim.ntstatus import BugCheck
from vbsim.policy import preset
from vbsim.trace import Event, Trace

BOOT_SECURE_CALLS = ("PHASE3_INIT", "PHASE4_INIT", "START_PROCESSOR")


def milestones(events: list[Event]) -> list[str]:
    """The boot events, the boot-time secure calls (on entry to the SK's dispatcher) and NT's
    processor start-ups, as short labels."""
    out: list[str] = []
    for e in events:
        if e.kind == "boot":
            label = e.mechanism
            if e.mechanism in ("secureboot", "revocation"):
                label += f":{e.detail['component']}"
            out.append(label)
        elif e.kind == "securecall" and e.mechanism == "dispatch" and e.outcome == "entered":
            if e.detail["service"] in BOOT_SECURE_CALLS:
                out.append(f"securecall:{e.detail['service']}")
        elif e.kind == "nt" and e.mechanism in ("start-processor", "init-sipi"):
            out.append(f"{e.mechanism}:{e.detail['ap']}")
    return out


def test_vbs_boot_order_matches_vbs_internals_1_1() -> None:
    system = boot(preset("vbs"))
    assert system.booted and system.vbs_running
    assert milestones(system.trace.events) == [
        "firmware",  # row 1: UEFI Secure Boot on
        "vsm-policy",  # row 3: OslSetVsmPolicy
        "secureboot:hvix64.exe",  # row 5: hypervisor image verified (loaded, not launched)
        "secureboot:ntoskrnl.exe",  # row 6: kernel image verified
        "secureboot:securekernel.exe",  # row 8: SK image verified
        "hypervisor-launch",  # row 10
        "sk-load",  # row 8: SK placed in reserved memory
        "enable-partition-vtl",  # row 11: SK entry, still in VTL0
        "enable-vp-vtl",  # row 11
        "sk-phase1",  # row 12: in VTL1 (the SK's own event)
        "sk-returned",  # row 12: HvCallVtlReturn, NT continues in VTL0
        "nt-phase0",  # row 13
        "securecall:PHASE3_INIT",  # row 13
        "phase3-init",
        "securecall:PHASE4_INIT",  # row 14
        "phase4-init",
        "securecall:START_PROCESSOR",  # row 15
        "start-processor:1",
        "start-trustlet",  # row 16: wininit starts LsaIso (Credential Guard)
        "nt-phase1",
        "credential-guard",  # LsaIso running
        "boot",  # complete
    ]
    boots = system.trace.find("boot")
    assert boots[-1].outcome == "complete" and boots[-1].detail["vbs"] is True
    by_name = {e.mechanism: e for e in boots}
    assert by_name["vsm-policy"].outcome == "vbs-on"
    assert by_name["hypervisor-launch"].outcome == "launched"
    assert by_name["enable-partition-vtl"].outcome == "success"
    assert by_name["enable-vp-vtl"].outcome == "success"
    sk_phase1 = [e for e in boots if e.mechanism == "sk-phase1"]
    assert (sk_phase1[0].vtl, sk_phase1[0].actor) == (1, "securekernel")
    assert (by_name["nt-phase0"].vtl, by_name["nt-phase0"].cpl) == (0, 0)
    assert by_name["phase3-init"].vtl == 1 and by_name["phase4-init"].vtl == 1
    assert by_name["credential-guard"].outcome == "running"


def test_no_secure_call_before_nt_phase0() -> None:
    """Until NT runs, the SK is entered only for its own initialisation (a VTL call with no
    service): NT's phase 0 makes the first secure calls (vbs-internals §1.1 rows 12-13) —
    INITIALIZE_KERNEL_CFG (MiInitializeKernelCfg registers the kCFG bitmap, which PHASE3_INIT
    then makes read-only: vbsim.nt.kcfg), then PHASE3_INIT."""
    system = boot(preset("vbs"))
    events = system.trace.events
    phase0 = next(i for i, e in enumerate(events) if e.mechanism == "nt-phase0")
    assert not [e for e in events[:phase0] if e.kind == "securecall"]
    calls = [
        e.detail["service"] for e in events if e.kind == "securecall" and "service" in e.detail
    ]
    first, second = calls[:2]
    assert (first, second) == ("INITIALIZE_KERNEL_CFG", "PHASE3_INIT")


def test_application_processors_are_started_by_vtl1() -> None:
    """Row 15: START_PROCESSOR then HvCallStartVirtualProcessor, issued by the SK in VTL1."""
    system = boot(preset("vbs").with_changes(vps=3))
    assert system.booted and system.machine is not None
    labels = milestones(system.trace.events)
    assert labels.count("securecall:START_PROCESSOR") == 2
    assert labels.index("phase4-init") < labels.index("securecall:START_PROCESSOR")
    starts = system.trace.find("vsm", "start-virtual-processor")
    assert [(e.vtl, e.detail["target_vp"], e.detail["target_vtl"]) for e in starts] == [
        (1, 1, 0),
        (1, 2, 0),
    ]
    assert all(vp.started and vp.vtl_enabled(1) for vp in system.machine.vps)
    assert system.steps[-1]["processors"] == 3


def test_single_processor_boot_starts_no_ap() -> None:
    system = boot(preset("vbs").with_changes(vps=1))
    assert system.booted
    assert "securecall:START_PROCESSOR" not in milestones(system.trace.events)


def test_vbs_off_boots_nt_alone() -> None:
    system = boot(preset("vbs-off"))
    assert system.booted and not system.vbs_running
    assert system.machine is not None and system.nt is not None
    assert system.machine.hv is None and system.machine.slat is None
    assert system.sk is None and system.nt.vsl is None
    assert milestones(system.trace.events) == [
        "firmware",
        "vsm-policy",
        "secureboot:ntoskrnl.exe",
        "hypervisor-launch",
        "nt-phase0",
        "init-sipi:1",  # without VBS NT starts the AP itself
        "nt-phase1",
        "boot",
    ]
    assert system.trace.find("boot", "vsm-policy")[0].outcome == "vbs-off"
    assert system.trace.find("boot", "hypervisor-launch")[0].outcome == "not-launched"
    # There is no VTL1 anywhere: no event ran in it, no VP has it.
    assert all(e.vtl in (None, 0) for e in system.trace.events)
    assert not system.trace.find("securecall")
    assert not any(vp.vtl_enabled(1) for vp in system.machine.vps)


def test_vbs_off_vmcall_is_undefined_opcode_and_nt_bugchecks() -> None:
    system = boot(preset("vbs-off"))
    assert system.machine is not None
    vp = system.machine.bsp
    with pytest.raises(Bugcheck) as stop:
        hvcall.raw_hypercall(vp, 0x0011, 0, 0)  # HvCallVtlCall
    assert stop.value.code == BugCheck.KMODE_EXCEPTION_NOT_HANDLED
    assert stop.value.params[0] == 0xC000_001D  # STATUS_ILLEGAL_INSTRUCTION
    ud = [e for e in system.trace.find("exception") if e.detail["vector"] == 6]
    assert ud and ud[-1].vtl == 0


def test_boot_uses_the_callers_trace() -> None:
    trace = Trace(record=True)
    seen: list[Event] = []
    trace.listen(seen.append)
    system = boot(preset("vbs"), trace=trace)
    assert system.trace is trace
    assert seen and seen[-1].mechanism == "boot"


def test_boot_uses_a_callers_non_empty_trace() -> None:
    trace = Trace(record=True)
    trace.emit("test", "marker", "start")
    system: System = boot(preset("vbs"), trace=trace)
    assert system.trace is trace and trace.events[0].kind == "test"
