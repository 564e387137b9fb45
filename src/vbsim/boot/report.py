"""What ``vbsim boot`` shows: the chain as it happened, VTL0 memory, processes, drivers."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from vbsim.boot.chain import boot
from vbsim.boot.memory_map import vtl0_memory_map
from vbsim.policy import Policy, warnings
from vbsim.text import safe

_BOOT_KINDS = ("boot", "securecall")


def boot_report(policy: Policy) -> dict[str, Any]:
    system = boot(policy)
    chain = [
        {
            "seq": e.seq,
            "vp": e.vp,
            "vtl": e.vtl,
            "step": e.mechanism,
            "outcome": e.outcome,
            "detail": e.to_json()["detail"],
        }
        for e in system.trace.events
        if e.kind == "boot" or (e.kind == "securecall" and e.outcome == "entered")
    ]
    report: dict[str, Any] = {
        "policy": policy.to_dict(),
        "warnings": warnings(policy),
        "halted": system.halted,
        "vbs_running": system.vbs_running,
        "chain": chain,
        "memory": [],
        "processes": [],
        "drivers": [],
    }
    if system.machine is not None:
        runs = vtl0_memory_map(system.machine, include_free=True, nt=system.nt)
        report["memory"] = [run.to_json() for run in runs]
    if system.nt is not None and system.machine is not None:
        from vbsim.nt.process import host_view

        views = [host_view(system.machine.ram, p.eprocess) for p in system.nt.processes.values()]
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
        report["drivers"] = sorted(system.nt.drivers)
    return report


def print_boot_report(report: dict[str, Any], out: Console) -> None:
    policy = report["policy"]
    out.print(f"[bold]policy[/] {safe(policy['name'])}: {safe(policy['description'])}")
    for warning in report.get("warnings", []):
        out.print(f"[yellow]warning:[/] {safe(warning)}")
    chain = Table(title="boot chain (vbs-internals §1.1)", header_style="bold")
    for column in ("#", "where", "step", "outcome", "details"):
        chain.add_column(column)
    for step in report["chain"]:
        where = "firmware/loader" if step["vtl"] is None else f"VP{step['vp']} VTL{step['vtl']}"
        detail = " ".join(f"{k}={v}" for k, v in step["detail"].items() if v is not None)
        style = "red" if step["outcome"] in ("rejected", "halted") else ""
        chain.add_row(
            str(step["seq"]),
            where,
            step["step"],
            f"[{style}]{safe(step['outcome'])}[/]" if style else safe(step["outcome"]),
            safe(detail),
        )
    out.print(chain)
    if report["halted"]:
        out.print(f"[bold red]boot halted:[/] {report['halted']}")
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
