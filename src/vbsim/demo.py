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
    assert system.nt_space is not None
    params = hvcall.ParamPages(*system.nt_space.alloc_data(), *system.nt_space.alloc_data())
    pfn = sorted(set(system.sk.space.frames))[0]
    result = hvcall.modify_vtl_protection_mask(vp.cpu, params, [pfn], 0xF, target_vtl=1)
    if not result.ok:
        raise GuestTermination(f"HvCallModifyVtlProtectionMask returned {result.status_name}")


def run(console: Console | None = None) -> int:
    out = console or Console(highlight=False)
    out.print(Panel.fit("[bold]vbsim demo[/]: Windows Virtualization-Based Security, executed"))
    system = _fresh()
    steps = Table(
        title="1. the boot chain of the 'vbs' preset, as it happened", header_style="bold"
    )
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

    from vbsim.attacks.catalogue import SCENARIOS
    from vbsim.attacks.matrix import access_matrix
    from vbsim.attacks.matrix_view import Key, matrix_key, matrix_table
    from vbsim.attacks.model import Outcome
    from vbsim.attacks.report import catalogue_table
    from vbsim.attacks.runner import run_catalogue

    out.print("\n[bold]2. who can reach what[/] — every cell probed live on the machine:")
    key = Key()
    out.print(matrix_table(access_matrix("vbs"), "vbs", key))
    for line in matrix_key(key):
        out.print(line)
    presets = ["vbs-off", "hardened"]
    results = run_catalogue(SCENARIOS, presets)
    out.print("\n[bold]3. the attack catalogue[/] without VBS and fully hardened:")
    out.print(catalogue_table(results, presets))
    by = {(r.id, r.preset): r for r in results}
    stopped = [r for r in results if r.preset == "hardened" and r.outcome is Outcome.BLOCKED]
    still = [r for r in results if r.preset == "hardened" and r.outcome is Outcome.SUCCEEDED]
    summary = Table(
        title="4. what VBS stops, and what it does not", header_style="bold", show_lines=True
    )
    summary.add_column("stopped on 'hardened'")
    summary.add_column("still works on 'hardened'")
    left = [f"{r.id} {r.title} [dim]({r.mechanism}"
            + ("; works without VBS" if by.get((r.id, "vbs-off")) and by[(r.id, "vbs-off")].outcome
               is Outcome.SUCCEEDED else "") + ")[/]" for r in stopped]  # fmt: skip
    right = [f"{r.id} {r.title}" for r in still]
    summary.add_row("\n".join(left) or "-", "\n".join(right) or "-")
    out.print(summary)
    mismatches = [r for r in results if not r.matches]
    out.print(
        "VBS isolates *memory and code*: VTL0 ring 0 cannot read, write or run VTL1, cannot change "
        "SLAT, cannot tamper with protected registers. It does not stop what stays inside the "
        "rules: data-only attacks on unprotected data (A6), using Credential Guard as an oracle "
        "(A21), or denial of service on VTL1 (A29)."
    )
    if mismatches:
        out.print(f"[red]{len(mismatches)} outcome(s) differ from the public record[/]")
        return 1
    return 0
