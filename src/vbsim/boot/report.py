"""What ``vbsim boot`` shows: the chain as it happened, VTL0 memory, processes, drivers."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from vbsim.boot.chain import boot
from vbsim.boot.memory_map import vtl0_memory_map
from vbsim.policy import LoadedPolicy, Policy, warnings
from vbsim.text import safe

_BOOT_KINDS = ("boot", "securecall")

#: The loader's image check (``boot.chain.verify_component``: signature, chain, signing level,
#: revocation) as it is named when Secure Boot is off: winload still checks the images it loads,
#: but nothing in the firmware verified winload itself, so it is no Secure Boot verification.
LOADER_CHECK = "winload-check"


def step_label(step: str, outcome: str, detail: dict[str, Any], secure_boot: bool) -> str:
    """What a boot step is called on screen: its name and the component it acted on
    (``secureboot hvix64.exe``), and never "secureboot" when the policy has Secure Boot off."""
    name = step
    if step == "secureboot" and not secure_boot:
        name = LOADER_CHECK
    elif step == "dispatch":
        name = f"secure call {detail.get('service', '?')}"
    component = detail.get("component")
    return f"{name} {component}" if component else name


def detail_text(detail: dict[str, Any], skip: tuple[str, ...] = ("component", "service")) -> str:
    """``key=value`` pairs; addresses (and anything past 16 bits) and call codes in hex."""
    parts = []
    for key, value in detail.items():
        if value is None or key in skip:
            continue
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if is_int and (key == "code" or value >= 1 << 16):
            value = f"{value:#x}"
        parts.append(f"{key}={value}")
    return " ".join(parts)


def boot_report(policy: Policy, source: LoadedPolicy | None = None) -> dict[str, Any]:
    """Boot ``policy`` and say what happened.  ``source``: the policy file it was loaded from
    (:func:`vbsim.policy.load_file`), whose warnings are only about what the file wrote."""
    system = boot(policy)
    chain = [
        {
            "seq": e.seq,
            "vp": e.vp,
            "vtl": e.vtl,
            "step": e.mechanism,
            "label": step_label(e.mechanism, e.outcome, e.detail, policy.secure_boot),
            "outcome": e.outcome,
            "detail": e.to_json()["detail"],
        }
        for e in system.trace.events
        if e.kind == "boot" or (e.kind == "securecall" and e.outcome == "entered")
    ]
    report: dict[str, Any] = {
        "policy": policy.to_dict(),
        "warnings": list(source.warnings) if source is not None else warnings(policy),
        "halted": system.halted,
        "vbs_running": system.vbs_running,
        "chain": chain,
        "memory": [],
        "processes": [],
        "drivers": [],
    }
    if source is not None:
        report["changes"] = list(source.changes)  # from the preset (or the defaults)
    if system.machine is not None:
        runs = vtl0_memory_map(system.machine, include_free=True, nt=system.nt)
        report["memory"] = [run.to_json() for run in runs]
    if system.nt is not None and system.machine is not None:
        views = system.process_views()
        report["processes"] = [
            {
                "pid": v.pid,
                "name": v.name,
                "user": v.user,
                "secure": v.trustlet_id is not None,
                "protection": f"{v.protection:#04x}",
            }
            for v in views
        ]
        report["drivers"] = sorted(system.modules())
    return report


def banner(policy: dict[str, Any]) -> str:
    """The policy line (markup, user text escaped): ``policy NAME: DESCRIPTION`` for a preset,
    ``custom policy NAME (from FILE), based on PRESET: ...; changes: ...`` for a file that
    changed something (:func:`vbsim.policy.load_file` names it so, whatever the file says)."""
    name, description = str(policy["name"]), safe(policy["description"])
    if name.startswith("custom policy"):
        head, _, rest = name.partition(" (from ")
        return f"[bold]{safe(head)}[/] (from {safe(rest)}: {description}"
    return f"[bold]policy[/] {safe(name)}: {description}"


def print_banner(report: dict[str, Any], out: Console) -> None:
    """The policy line; a file's changes one a line when there are several."""
    policy, changes = report["policy"], report.get("changes") or []
    listed = "changes: " + "; ".join(changes)
    if len(changes) < 2 or not str(policy["description"]).endswith(listed):
        out.print(banner(policy))
        return
    own = str(policy["description"]).removesuffix(listed).removesuffix("; ")
    out.print(banner({**policy, "description": f"{own}; changes:" if own else "changes:"}))
    for change in changes:
        out.print(f"  {safe(change)}")


def print_boot_report(report: dict[str, Any], out: Console) -> None:
    policy = report["policy"]
    print_banner(report, out)
    for warning in report.get("warnings", []):
        out.print(f"[yellow]warning:[/] {safe(warning)}")
    secure_boot = bool(policy.get("secure_boot", True))
    if not secure_boot:
        out.print(
            f"Secure Boot is off: nothing verified winload; '{LOADER_CHECK}' rows are winload's "
            "own check of the images it loads."
        )
    chain = Table(title="boot chain (vbs-internals §1.1)", header_style="bold")
    rows = []
    for step in report["chain"]:
        if step["vtl"] is not None:
            where = f"VP{step['vp']} VTL{step['vtl']}"
        else:
            where = "firmware" if step["step"] == "firmware" else "loader"
        label = step.get("label") or step_label(
            step["step"], step["outcome"], step["detail"], secure_boot
        )
        rows.append((step, where, label, detail_text(step["detail"])))
    # Nothing is cut at 80 columns: the details go under the step's name (dim), wrapping at
    # spaces, in a column at least as wide as its longest word (a service name, a hex address).
    longest = max([12, *(len(w) for _, _, label, d in rows for w in f"{label} {d}".split())])
    chain.add_column("#", justify="right", no_wrap=True)
    chain.add_column("where", no_wrap=True)
    chain.add_column("step (component) and details", min_width=longest, ratio=1)
    chain.add_column("outcome", no_wrap=True)
    for step, where, label, detail in rows:
        style = "red" if step["outcome"] in ("rejected", "halted") else ""
        chain.add_row(
            str(step["seq"]),
            where,
            safe(label) + (f"\n[dim]{safe(detail)}[/]" if detail else ""),
            f"[{style}]{safe(step['outcome'])}[/]" if style else safe(step["outcome"]),
        )
    out.print(chain)
    if report["halted"]:
        out.print(f"[bold red]boot halted:[/] {safe(report['halted'])}")
        return
    memory = Table(title="guest-physical memory as VTL0 may use it (SLAT)", header_style="bold")
    for column in ("GPA range", "pages", "VTL0 rights", "owner"):
        memory.add_column(column)
    for run in report["memory"]:
        end = run["gpa"] + run["pages"] * 4096 - 1
        memory.add_row(
            f"0x{run['gpa']:09x}-0x{end:09x}", str(run["pages"]), run["rights"], run["owner"]
        )
    out.print(memory)
    processes = Table(title="processes", header_style="bold")
    for column in ("pid", "name", "user", "secure", "protection"):
        processes.add_column(column)
    for proc in report["processes"]:
        processes.add_row(
            str(proc["pid"]),
            proc["name"],
            proc["user"],
            "yes" if proc["secure"] else "",
            proc["protection"],
        )
    out.print(processes)
    out.print(
        f"drivers: {', '.join(report['drivers']) or 'none'}; VBS running: {report['vbs_running']}"
    )
