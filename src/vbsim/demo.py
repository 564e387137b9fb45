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

from vbsim.attacks.matrix import ACCESS_OPS, AREAS, Cell, matrix_json
from vbsim.attacks.matrix_view import LINE_WIDTH, MEANING, Key
from vbsim.attacks.model import Outcome, RunResult
from vbsim.boot.chain import System, boot
from vbsim.policy import preset

#: What each boot step means (vbs-internals §1.1 rows), keyed by the step's mechanism.
NARRATION = {
    "firmware": "UEFI starts with Secure Boot",
    "vsm-policy": "winload reads the VBS policy",
    "secureboot": "signature and version checked",
    "winload-check": "signature checked by winload (no Secure Boot)",
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
    "SK": "the Secure Kernel (VTL1 ring 0)",
    "K1": "attacker in the Secure Kernel (VTL1 ring 0)",
    "PHYS": "a malicious DMA device on the bus",
    "n/a": "the attack needs something this preset does not have",
    "slat": "the hypervisor's second-level translation refused",
    "iommu": "the IOMMU refused the device's DMA",
    "paging.us": "a CPL3 access to a supervisor-only page",
    "paging.p": "nothing mapped there in the prober's own tables",
    "smep": "supervisor-mode execution prevention refused kernel execution of a user page",
    "cpl:#UD": "a hypercall from CPL3 raises #UD",
    "syscall": "NT's system-call dispatcher served it",
    "sysret": "the kernel ran the user code at CPL3",
    "secure-call": "the SK's secure-call dispatcher served NT",
    "secure-syscall": "the SK's secure service table served it",
    "normal-call": "NT served the SK's normal call",
    "skci": "the Secure Kernel's code integrity refused an image",
    "hyperguard": "the SK's register/MSR intercepts refused a change",
    "securecall": "the Secure Kernel refused a secure call's arguments",
    "kdp": "Kernel Data Protection: the page is read-only in SLAT",
    "hvci.w^x": "HVCI: a page is never writable and kernel-executable at once",
    "sk.crashdump": "the SK encrypts VTL1 memory in a dump",
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
    """The boot chain in trace order (loader and kernel steps interleaved as they happened),
    each step named as ``vbsim boot`` names it (with its component)."""
    from vbsim.boot.report import LOADER_CHECK, step_label

    secure_boot = system.policy.secure_boot
    steps = []
    for event in system.trace.events:
        if event.kind != "boot":
            continue
        component = event.detail.get("component")
        name = event.mechanism
        if name == "secureboot" and not secure_boot:
            name = LOADER_CHECK
        steps.append(
            {
                "who": _WHO.get(event.actor, event.actor or "firmware"),
                "step": step_label(event.mechanism, event.outcome, event.detail, secure_boot),
                "outcome": event.outcome,
                "component": component,
                "vtl": event.vtl,
                "means": NARRATION.get(name, ""),
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


_SHORT = {"read": "R", "write": "W", "execute": "X", "call": "C"}
_WORD = {"allowed": "yes", "blocked": "no", "-": "-"}
_STYLE = {"allowed": "red", "blocked": "green", "-": "dim"}


def _matrix_line(head: str, result: str, mechanism: str, key: Key, show: bool, room: int) -> str:
    text = f"{head} {_WORD.get(result, result)}"
    if show and result != "-":
        text += " " + key.label(mechanism, room - len(text) - 1)
    return f"[{_STYLE.get(result, 'dim')}]{escape(text)}[/]"


def compact_cell(cell: Cell, key: Key, room: int = LINE_WIDTH) -> str:
    """One cell in two or three lines: R, W and X together when the probe saw the same for all
    three (``RWX no slat``), the call, and the probe through a PTE the prober's kernel built."""
    lines = []
    for results, mechanisms, prefix, always in (
        (cell.results, cell.mechanisms, "", True),
        (cell.granted, cell.granted_mechanisms, "+PTE ", False),
    ):
        groups: dict[tuple[str, str], list[str]] = {}
        for op in ACCESS_OPS:
            if op in results or always:
                result = results.get(op, "-")
                mechanism = mechanisms.get(op, "-") if result == "blocked" else ""
                groups.setdefault((result, mechanism), []).append(_SHORT[op])
        for (result, mechanism), ops in groups.items():
            lines.append(_matrix_line(prefix + "".join(ops), result, mechanism, key, True, room))
        if always:
            result = cell.results.get("call", "-")
            mechanism = cell.mechanisms.get("call", "-")
            lines.append(_matrix_line("C", result, mechanism, key, result != "-", room))
    return "\n".join(lines)


def matrix_table(cells: list[Cell], key: Key, width: int = 100) -> Table:
    """The 4x4 matrix for a ``width``-column screen: a cell line is at most ``LINE_WIDTH`` (20)
    wide, less on a narrow screen, where a mechanism that does not fit becomes a note."""
    # 6 for the row header ("kernel"), 5 borders, 1 column of padding each side of 4 cells.
    room = max(12, min(LINE_WIDTH, (width - 6 - 5 - 9) // 4))
    table = Table(header_style="bold", show_lines=True, pad_edge=False)
    table.add_column("", style="bold", no_wrap=True)
    for area in AREAS:
        table.add_column(area, no_wrap=True)
    by = {(c.source, c.target): c for c in cells}
    for source in AREAS:
        row = [compact_cell(by[(source, t)], key, room) for t in AREAS if (source, t) in by]
        table.add_row(source.replace(" ", "\n"), *row)
    return table


def _attack_table(tour: Tour, shown: list[RunResult]) -> Table:
    table = Table(header_style="bold", box=None, pad_edge=False, padding=(0, 1))
    table.add_column("id", no_wrap=True)
    table.add_column("attack")
    table.add_column("has", no_wrap=True)
    table.add_column("decided by", no_wrap=True)
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
    worked_ids = {r.id for r in worked}
    still = [r for r in tour.still if r.id in worked_ids]
    against = [r for r in tour.still if r.id not in worked_ids]
    checks = ", ".join(f"{name} ({count})" for name, count in mechanisms.most_common())
    lines = [
        f"Of the {len(worked)} attacks that succeed without VBS, 'hardened' stopped "
        f"{len(tour.stopped)}; what decided: {checks or 'nothing'}.",
    ]
    if still:
        lines.append(
            f"{len(still)} still succeed on 'hardened' ({', '.join(r.id for r in still)}): they "
            "stay inside the rules VBS enforces (VTL1's memory and code, SLAT, signed code)."
        )
    if against:
        lines.append(
            f"{len(against)} more need VBS to exist and succeed against it on 'hardened' "
            f"({', '.join(r.id for r in against)})."
        )
    example = (still or against)[:1]
    if example:
        lines[-1] += f" See one: 'vbsim attack {example[0].id} --preset hardened --trace'."
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


#: What the matrix's own notation means (its mechanisms are explained from ``MEANING``).
MATRIX_KEY = (
    "R/W/X: read, write, execute the column's page (RWX: all three alike); C: call it through a "
    "gate; +PTE: the same through a PTE the prober's own kernel built on purpose; -: no such gate"
)


def key_lines(tour: Tour, shown: list[RunResult], key: Key) -> list[str]:
    """One key for the whole tour: the matrix notation, then every abbreviation and mechanism
    the screen shows (attack rows and matrix cells), each once, and the matrix's notes."""
    entries: dict[str, str] = {}
    for name in _used_keys(tour, shown):
        entries[name] = KEY[name]
    for mechanism in key.shown:
        if mechanism in key.notes or mechanism in entries:
            continue
        meaning = KEY.get(mechanism) or MEANING.get(mechanism)
        if meaning is not None:
            entries[mechanism] = meaning
    entries["SK"] = KEY["SK"]
    lines = [f"{MATRIX_KEY}.", "; ".join(f"{k} = {v}" for k, v in entries.items()) + "."]
    for number, mechanism in enumerate(key.notes, 1):
        meaning = MEANING.get(mechanism.split(":", 1)[0])
        lines.append(f"[{number}] {mechanism}" + (f" ({meaning})" if meaning else ""))
    return lines


def run(console: Console | None = None) -> int:
    out = console or Console(highlight=False)
    tour = collect()
    out.print("[bold]vbsim demo[/]: Windows Virtualization-Based Security, executed")
    out.print(
        "\n[bold]1. Boot[/] ('vbs' preset). Notice the order: the hypervisor launches before the "
        "Secure Kernel, and VTL0 loses the SK's pages at PHASE3_INIT, before drivers run."
    )
    out.print(_boot_table(tour))
    out.print(
        "\n[bold]2. Who can reach what[/] (row: who acts; column: whose page), each cell probed "
        "live. " + matrix_sentence(tour)
    )
    key = Key()
    out.print(matrix_table(tour.cells, key, out.width))
    shown = _pick(tour)
    out.print(
        f"\n[bold]3. Attacks[/]: {len(shown)} of the {len(tour.stopped)} that succeed without "
        "VBS and fail on 'hardened' (all: 'vbsim attacks')."
    )
    out.print(_attack_table(tour, shown))
    out.print("\n[bold]4. What VBS does and does not stop[/]")
    for line in conclusion(tour):
        out.print(escape(line))
    lines = key_lines(tour, shown, key)
    out.print("\n[dim]Key: " + escape(lines[0]) + "[/]")
    for line in lines[1:]:
        out.print(f"[dim]{escape(line)}[/]")
    out.print(
        "More: 'vbsim report -o vbsim-report.html' (the whole story, with sequence diagrams), "
        "'vbsim attacks', 'vbsim matrix --preset hardened'."
    )
    if tour.mismatches:
        out.print(f"[red]{len(tour.mismatches)} outcome(s) differ from the public record[/]")
        return 1
    return 0
