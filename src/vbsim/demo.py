"""``vbsim demo``: the tour for a new user.

It boots the ``vbs`` preset and narrates the boot chain, then lets VTL0 ring 0 — the NT kernel,
or an attacker with its powers — try things against VTL1 and shows which mechanism answered.
Every outcome is measured from what happened in the machine, not declared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from vbsim.boot.chain import System, boot
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.faults import GuestTermination
from vbsim.hw.x86 import PAGE_SHIFT, Cr4
from vbsim.policy import preset
from vbsim.trace import Event

_NARRATION = {
    "firmware": "UEFI firmware with Secure Boot starts",
    "secureboot": "Secure Boot checks a component's Authenticode signature and version",
    "revocation": "the SkuSiPolicy revocation floor rejects a component",
    "vsm-policy": "winload reads the VBS policy (UEFI variable if locked, else the registry)",
    "hypervisor-launch": "the hypervisor launches: from now on SLAT stands between VTLs and RAM",
    "sk-load": "the Secure Kernel image is loaded into reserved memory",
    "enable-partition-vtl": "HvCallEnablePartitionVtl(VTL1)",
    "enable-vp-vtl": "HvCallEnableVpVtl(VP0, VTL1) with the Secure Kernel's entry context",
    "sk-phase1": "Secure Kernel phase 1 in VTL1: own pages read-only for VTL0, HyperGuard armed",
    "sk-returned": "VTL return: NT continues in VTL0",
    "nt-phase0": "NT phase 0: IDT, LSTAR ... (HyperGuard lets them through: still trusted)",
    "phase3-init": "PHASE3_INIT: Secure Kernel pages become inaccessible to VTL0",
    "phase4-init": "PHASE4_INIT: from here every VTL0 input is hostile",
    "nt-phase1": "NT phase 1: processors started through the Secure Kernel",
    "mandatory": "Mandatory decides whether to continue without VBS",
    "boot": "boot finished",
}


@dataclass
class Probe:
    what: str
    outcome: str
    mechanism: str


def _fresh() -> System:
    system = boot(preset("vbs"))
    assert system.machine is not None and system.nt is not None
    return system


def _mechanism(events: list[Event], start: int) -> str:
    """The deciding check: the first refusal or bugcheck after ``start``."""
    for event in events[start:]:
        if event.kind == "access" and event.outcome == "denied":
            return event.mechanism
        if event.kind == "hypercall" and event.outcome not in ("success", "invalid-opcode"):
            return f"hypercall ({event.outcome})"
        if event.kind in ("bugcheck", "hyperguard") and event.outcome != "allowed":
            return event.mechanism if event.kind != "bugcheck" else event.outcome
    return "-"


def _probe(what: str, action: Callable[[System], bytes | None], secret_check: bool) -> Probe:
    system = _fresh()
    trace = system.trace
    start = len(trace.events)
    outcome = "succeeded"
    try:
        data = action(system)
        if secret_check and data is not None and any(data):
            outcome = "succeeded (data read)"
    except GuestTermination as stop:
        outcome = f"blocked: {stop}"
    return Probe(what, outcome, _mechanism(trace.events, start))


def _read_sk_memory(system: System) -> bytes:
    assert system.sk is not None and system.machine is not None
    vp = system.machine.bsp
    pfn = sorted(set(system.sk.space.frames))[0]
    return vp.read(DIRECT_MAP + (pfn << PAGE_SHIFT), 16)


def _write_sk_memory(system: System) -> None:
    assert system.sk is not None and system.machine is not None
    pfn = sorted(set(system.sk.space.frames))[-1]
    system.machine.bsp.write(DIRECT_MAP + (pfn << PAGE_SHIFT), b"\xcc" * 16)


def _clear_smep(system: System) -> None:
    assert system.machine is not None
    vp = system.machine.bsp
    vp.mov_to_cr(4, vp.p.cr4 & ~int(Cr4.SMEP))


def _grant_self(system: System) -> None:
    from vbsim.guest import hvcall

    assert system.nt is not None and system.machine is not None and system.sk is not None
    vp = system.machine.bsp
    params = hvcall.ParamPages(*system.nt.space.alloc_data(), *system.nt.space.alloc_data())
    pfn = sorted(set(system.sk.space.frames))[0]
    result = hvcall.modify_vtl_protection_mask(vp, params, [pfn], 0xF, target_vtl=1)
    if not result.ok:
        raise GuestTermination(f"HvCallModifyVtlProtectionMask returned {result.status_name}")


def run(console: Console | None = None) -> int:
    out = console or Console(highlight=False)
    out.print(Panel.fit("[bold]vbsim demo[/]: Windows Virtualization-Based Security, executed"))
    system = _fresh()
    steps = Table(title="boot chain of the 'vbs' preset, as it happened", header_style="bold")
    steps.add_column("step")
    steps.add_column("outcome")
    steps.add_column("what it means")
    for step in system.steps:
        steps.add_row(step["step"], step["outcome"], _NARRATION.get(step["step"], ""))
    for event in system.trace.events:
        if event.kind == "boot" and event.vtl is not None:
            steps.add_row(
                f"  {event.mechanism}", event.outcome, _NARRATION.get(event.mechanism, "")
            )
    out.print(steps)
    probes = [
        _probe("VTL0 kernel reads Secure Kernel memory", _read_sk_memory, secret_check=True),
        _probe("VTL0 kernel writes Secure Kernel memory", lambda s: _write_sk_memory(s), False),
        _probe(
            "VTL0 kernel grants itself VTL1's pages (hypercall)", lambda s: _grant_self(s), False
        ),
        _probe("VTL0 kernel clears CR4.SMEP", lambda s: _clear_smep(s), False),
    ]
    table = Table(title="VTL0 ring 0 against VTL1 (each on a fresh machine)", header_style="bold")
    for column in ("attempt", "outcome", "deciding check"):
        table.add_column(column)
    for probe in probes:
        style = "green" if probe.outcome.startswith("blocked") else "red"
        table.add_row(probe.what, f"[{style}]{probe.outcome}[/]", probe.mechanism)
    out.print(table)
    out.print(
        "What is stopped here is stopped by SLAT, secure intercepts and HyperGuard — not by any "
        "rule about the attacker.  The attack catalogue, the access matrix and Credential Guard "
        "arrive with the next issues."
    )
    return 0
