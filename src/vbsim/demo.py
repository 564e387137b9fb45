"""``vbsim demo``: the tour for a new user, in about two screens.

Four sections, each opened by one sentence on what to notice: the boot chain of the ``vbs``
preset in the order it happened (each step naming the component that took it), the live access
matrix of the four areas, the telling rows of the attack catalogue without VBS and fully
hardened, and a conclusion.  Every sentence that states a result is computed from what ran —
the trace, the matrix cells, the catalogue verdicts — never written in advance; every
abbreviation shown is explained in a key.  ``--json`` gives the same data for scripts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vbsim.attacks.matrix import Cell, matrix_json
from vbsim.attacks.model import Outcome, RunResult
from vbsim.boot.chain import System, boot
from vbsim.policy import preset

#: What each boot step means (vbs-internals §1.1 rows), keyed by the step's mechanism.
NARRATION = {
    "firmware": "UEFI starts with Secure Boot",
    "vsm-policy": "winload reads the VBS policy",
    "secureboot": "signature and version checked",
    "revocation": "SkuSiPolicy rejects an old version",
    "uefi-lock": "the UEFI lock overrides the registry",
    "mandatory": "Mandatory: go on without VBS?",
    "hypervisor-launch": "SLAT now stands between VTLs and RAM",
    "restricted-user-mode": "MBEC emulated for HVCI",
    "sk-load": "SK image in its reserved memory",
    "enable-partition-vtl": "VTL1 exists in the partition",
    "enable-vp-vtl": "VP0 gets a VTL1 context at the SK",
    "sk-phase1": "SK pages read-only to VTL0",
    "sk-returned": "VTL return: NT goes on in VTL0",
    "nt-phase0": "IDT, LSTAR set (VTL0 still trusted)",
    "phase3-init": "SK pages unreadable to VTL0",
    "phase4-init": "every VTL0 input is hostile now",
    "start-trustlet": "LsaIso starts in IUM (VTL1 user)",
    "nt-phase1": "APs started through the SK",
    "credential-guard": "lsass keeps only ciphertext",
    "boot": "boot finished",
}

#: Who takes a step, by the trace event's actor (the firmware, the loader, or a kernel).
_WHO = {"firmware": "firmware", "boot": "winload", "nt": "nt", "securekernel": "securekernel"}

#: Every abbreviation the tour prints, and what it means.
KEY = {
    "U0": "attacker as a standard user (VTL0 ring 3)",
    "A0": "attacker as an administrator (VTL0 ring 3, SeDebugPrivilege)",
    "K0": "attacker with VTL0 kernel read/write and code reuse (ring 0)",
    "K1": "attacker in the Secure Kernel (VTL1 ring 0)",
    "PHYS": "a malicious DMA device on the bus",
    "n/a": "the attack needs something this preset does not have",
    "slat": "the hypervisor's second-level translation refused the access",
    "iommu": "the IOMMU refused the device's DMA",
    "paging.us": "the page tables refused a user-mode access to a kernel page",
    "paging.p": "no page-table entry maps the address",
    "smep": "supervisor-mode execution prevention refused kernel execution of a user page",
    "cpl:#UD": "an instruction user mode may not execute (invalid opcode)",
    "skci": "the Secure Kernel's code integrity refused an image",
    "hyperguard": "the Secure Kernel's register/MSR intercepts refused a change",
    "securecall": "the Secure Kernel refused a secure call's arguments",
    "kdp": "Kernel Data Protection: the page is read-only in SLAT",
    "hvci.w^x": "HVCI: a page is never writable and kernel-executable at once",
    "sk.crashdump": "the Secure Kernel encrypts VTL1 memory in a dump",
    "goal not met": "nothing refused, but there was nothing to take",
}


@dataclass
class Tour:
    """What ran, for the screen and for ``--json``."""

    boot: list[dict[str, Any]] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    results: list[RunResult] = field(default_factory=list)
    stopped: list[RunResult] = field(default_factory=list)
    still: list[RunResult] = field(default_factory=list)
    mismatches: list[RunResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "boot": self.boot,
            "matrix": matrix_json(self.cells),
            "attacks": [r.to_json() for r in self.results],
            "stopped_by_vbs": [r.id for r in self.stopped],
            "still_succeed_hardened": [r.id for r in self.still],
            "differ_from_record": [f"{r.id}@{r.preset}" for r in self.mismatches],
        }


def boot_steps(system: System) -> list[dict[str, Any]]:
    """The boot chain in trace order (loader and kernel steps interleaved as they happened)."""
    steps = []
    for event in system.trace.events:
        if event.kind != "boot":
            continue
        component = event.detail.get("component")
        means = NARRATION.get(event.mechanism, "")
        steps.append(
            {
                "who": _WHO.get(event.actor, event.actor or "firmware"),
                "step": event.mechanism,
                "outcome": event.outcome,
                "component": component,
                "vtl": event.vtl,
                "means": f"{component}: {means}" if component else means,
            }
        )
    return steps


def collect() -> Tour:
    from vbsim.attacks.catalogue import SCENARIOS
    from vbsim.attacks.matrix import access_matrix
    from vbsim.attacks.runner import run_catalogue

    tour = Tour()
    tour.boot = boot_steps(boot(preset("vbs")))
    tour.cells = access_matrix("vbs")
    tour.results = run_catalogue(SCENARIOS, ["vbs-off", "hardened"])
    by = {(r.id, r.preset): r for r in tour.results}
    for result in tour.results:
        if result.preset != "hardened":
            continue
        off = by.get((result.id, "vbs-off"))
        if result.outcome is Outcome.BLOCKED and off and off.outcome is Outcome.SUCCEEDED:
            tour.stopped.append(result)
        elif result.outcome is Outcome.SUCCEEDED:
            tour.still.append(result)
    tour.mismatches = [r for r in tour.results if not r.matches]
    return tour


def _boot_table(tour: Tour) -> Table:
    table = Table(header_style="bold", box=None, pad_edge=False, padding=(0, 1))
    table.add_column("who", no_wrap=True)
    table.add_column("step", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("what it means")
    for step in tour.boot:
        table.add_row(escape(step["who"]), step["step"], step["outcome"], step["means"])
    return table


def _attack_table(tour: Tour, shown: list[RunResult]) -> Table:
    table = Table(header_style="bold", box=None, pad_edge=False, padding=(0, 1))
    table.add_column("id", no_wrap=True)
    table.add_column("attack")
    table.add_column("has", no_wrap=True)
    table.add_column("on 'hardened': check", no_wrap=True)
    for result in shown:
        table.add_row(result.id, escape(result.title), result.capability, _check(result))
    return table


def _used_keys(tour: Tour, shown: list[RunResult]) -> list[str]:
    """The abbreviations the attack rows show, in the order of KEY (the matrix has its own)."""
    words = {r.capability for r in shown} | {r.mechanism.split(":")[0] for r in shown}
    words |= {_check(r) for r in shown}
    return [name for name in KEY if name in words]


def matrix_sentence(tour: Tour) -> str:
    """What to notice in the matrix, counted from its cells: VTL0 against VTL1's memory."""
    refused = total = 0
    why: Counter[str] = Counter()
    for cell in tour.cells:
        if not cell.source.startswith("VTL0") or not cell.target.startswith("VTL1"):
            continue
        for results, mechanisms in ((cell.results, cell.mechanisms),
                                    (cell.granted, cell.granted_mechanisms)):  # fmt: skip
            for op in ("read", "write", "execute"):
                if op in results:
                    total += 1
                    refused += results[op] == "blocked"
                    if results[op] == "blocked":
                        why[mechanisms.get(op, "?")] += 1
    checks = ", ".join(name for name, _ in why.most_common())
    return (
        f"Notice: VTL0 (user or kernel) was refused {refused} of {total} reads, writes and "
        f"executes of VTL1's memory (by {checks}); even a page-table entry NT built on purpose "
        "meets SLAT."
    )


def conclusion(tour: Tour) -> list[str]:
    """What the catalogue showed, in sentences computed from its verdicts."""
    mechanisms = Counter(_check(r) for r in tour.stopped)
    worked = [r for r in tour.results if r.preset == "vbs-off" and r.outcome is Outcome.SUCCEEDED]
    checks = ", ".join(f"{name} ({count})" for name, count in mechanisms.most_common())
    lines = [
        f"Of the {len(worked)} attacks that succeed without VBS, 'hardened' stopped "
        f"{len(tour.stopped)}; what decided: {checks or 'nothing'}.",
    ]
    if tour.still:
        ids = ", ".join(r.id for r in tour.still)
        lines.append(
            f"{len(tour.still)} still succeed on 'hardened' ({ids}): they stay inside the rules "
            "VBS enforces (VTL1's memory and code, SLAT, signed code). See one with "
            "'vbsim attack D1 --preset hardened --trace'."
        )
    return lines


def _check(result: RunResult) -> str:
    """The deciding check's family; a block with no refusing check means the goal was not met
    (there was nothing to take: e.g. lsass holds only ciphertext under Credential Guard)."""
    kind = result.mechanism.split(":")[0]
    return "goal not met" if kind in ("", "-") else kind


def _pick(tour: Tour, limit: int = 6) -> list[RunResult]:
    """The telling rows: one stopped attack per deciding check first, then the others."""
    seen: set[str] = set()
    first: list[RunResult] = []
    rest: list[RunResult] = []
    for result in tour.stopped:
        kind = _check(result)
        (rest if kind in seen else first).append(result)
        seen.add(kind)
    return (first + rest)[:limit]


def run(console: Console | None = None) -> int:
    from vbsim.attacks.matrix_view import Key, matrix_key, matrix_table

    out = console or Console(highlight=False)
    tour = collect()
    out.print("[bold]vbsim demo[/]: Windows Virtualization-Based Security, executed")
    out.print(
        "\n[bold]1. Boot[/] ('vbs' preset). Notice the order: the hypervisor launches before the "
        "Secure Kernel, and VTL0 loses the SK's pages at PHASE3_INIT, before drivers run."
    )
    out.print(_boot_table(tour))
    out.print("\n[bold]2. Who can reach what[/], each cell probed live. " + matrix_sentence(tour))
    key = Key()
    out.print(matrix_table(tour.cells, "vbs", key))
    for line in matrix_key(key):
        out.print(line)
    shown = _pick(tour)
    out.print(
        f"\n[bold]3. Attacks[/]: {len(shown)} of the {len(tour.stopped)} that succeed without "
        "VBS and fail on 'hardened' ('vbsim attacks': every scenario, all five presets)."
    )
    out.print(_attack_table(tour, shown))
    out.print("\n[bold]4. What VBS does and does not stop[/]")
    for line in conclusion(tour):
        out.print(escape(line))
    names = _used_keys(tour, shown)
    out.print("\n[dim]Key: " + "; ".join(f"{name} = {KEY[name]}" for name in names) + ".[/]")
    out.print(
        "More: 'vbsim report -o vbsim-report.html' (the whole story, with sequence diagrams), "
        "'vbsim attacks', 'vbsim matrix --preset hardened'."
    )
    if tour.mismatches:
        out.print(f"[red]{len(tour.mismatches)} outcome(s) differ from the public record[/]")
        return 1
    return 0
