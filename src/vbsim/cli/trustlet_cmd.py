"""``vbsim trustlet``: the known trustlets, and running one on a booted machine.

- ``list`` shows the trustlets vbsim ships (``vbsim.ium.images.TRUSTLETS``) with the policy
  signed into each image's ``.tPolicy`` (vbs-internals §3.1, §3.2), and the IDs the Secure
  Kernel allows.
- ``run IMAGE [--id N] [--preset P] [--message HEX]`` boots the preset, asks NT to start IMAGE
  (a file, or a known name such as ``LsaIso.exe``) as a secure process with trustlet ID N
  (§3.5), and shows SKCI's admission from the trace (events of kind ``ium`` with mechanism
  ``skci.*``, §3.6), the reply to one message, and what VTL0 can see of the trustlet (§7),
  each row probed through the architectural interface VTL0 really has: NT's process list,
  ``NtQueryInformationProcess`` and ``NtReadVirtualMemory`` from an administrator's process with
  SeDebugPrivilege, and the ``DEBUG_PROCESS`` / ``GET_CONTEXT`` / ``RETRIEVE_MAILBOX`` secure calls.

- ``export NAME -o FILE`` writes the signed image of a shipped trustlet as the preset installs
  it, for ``vbsim image verify`` or ``osslsigncode verify``.

Exit status: 0 when the trustlet was admitted and its run returned STATUS_SUCCESS, 1 when it was
refused, its run failed or the machine stopped, 2 for bad input.  Every command takes ``--json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vbsim.cli.image_cmd import (
    CliError,
    fail,
    format_policy_value,
    internal_error,
    policy_entries_json,
    read_input,
    register_known_routines,
    trustlet_name,
)
from vbsim.cli.output import json_text, path_arg
from vbsim.cli.render import console, describe_detail
from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.ntstatus import NtStatus
from vbsim.sk.ium.checks import CHECKS
from vbsim.text import path_text, safe, shell_word, visible

if TYPE_CHECKING:
    from vbsim.boot.chain import System
    from vbsim.nt.process import Process
    from vbsim.trace import Event

trustlet_app = typer.Typer(
    help="Trustlets (IUM): list the known ones, run one on a booted machine, export one.",
    no_args_is_help=True,
    add_completion=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]

#: SKCI's checks in the order ``vbsim.sk.ium.skci.admit`` runs them (its module docstring;
#: vbs-internals Appendix A item 6), then the page re-hash the IUM service does after admission.
SKCI_CHECKS = (*CHECKS, "page-hash")
#: NtQueryInformationProcess class the model answers with IsSecureProcess and the trustlet ID.
PROCESS_IS_SECURE_CLASS = 0x3F
MAX_MESSAGE = 4096
_TRACE_KINDS = ("ium", "ium-syscall", "normalcall", "bugcheck", "crash", "intercept")


# -- VTL0 probes: guest code an administrator's process runs at VTL0 CPL3 ------------------------
@guest_code("cli.trustlet.read_process")
def _read_process(vp: Cpu, pid: int, va: int, length: int, buffer: int) -> tuple[int, bytes]:
    """ReadProcessMemory: NtReadVirtualMemory into ``buffer``, then read the buffer."""
    from vbsim.nt.syscalls import syscall

    status = syscall(vp, "NtReadVirtualMemory", pid, va, buffer, length)
    return status, vp.read(buffer, length)


@guest_code("cli.trustlet.query_process")
def _query_process(vp: Cpu, pid: int, buffer: int) -> tuple[int, int]:
    from vbsim.nt.syscalls import syscall

    status = syscall(vp, "NtQueryInformationProcess", pid, PROCESS_IS_SECURE_CLASS, buffer)
    return status, vp.read_u64(buffer)


_PROBES = ["cli.trustlet.read_process", "cli.trustlet.query_process"]


# -- message formats -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Message:
    """One request a trustlet accepts: a little-endian u32 ``op`` first, then ``fields`` (name,
    size in bytes, or ``None`` for the rest of the message), and what it replies."""

    name: str
    op: int
    fields: tuple[tuple[str, int | None], ...]
    reply: str

    def layout(self) -> str:
        """``op:u32=1, user[32], ...``: a u32 as ``name:u32``, bytes as ``name[size]``, the
        variable-length rest as ``name[n]``."""
        parts = [f"op:u32={self.op}"]
        for field, size in self.fields:
            if field.startswith("u32 "):
                parts.append(f"{field.removeprefix('u32 ')}:u32")
            else:
                parts.append(f"{field}[{size if size is not None else 'n'}]")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "fields": [{"name": n, "size": s} for n, s in self.fields],
            "layout": self.layout(),
            "reply": self.reply,
        }


def message_formats() -> dict[str, tuple[Message, ...]]:
    """What each shipped trustlet's entry routine parses (``vbsim.ium.lsaiso``, ``vbsim.ium.vmsp``:
    the sizes and op codes are theirs), in one notation: fields in order, sizes in bytes."""
    from vbsim.ium import lsaiso, vmsp
    from vbsim.ium.images import LSAISO, VMSP

    return {
        LSAISO: (
            Message(
                "PROTECT",
                lsaiso.OP_PROTECT,
                (
                    ("user (NUL-padded)", lsaiso.USER_LEN),
                    ("NT OWF", lsaiso.OWF_LEN),
                    ("Kerberos key", lsaiso.KERB_LEN),
                ),
                "an encrypted credential blob (what lsass keeps)",
            ),
            Message(
                "RESPOND",
                lsaiso.OP_RESPOND,
                (("u32 blob length", 4), ("blob", None), ("challenge", 8)),
                "a 24-byte NTLM-style response to the challenge",
            ),
        ),
        VMSP: (
            Message(
                "SEAL",
                vmsp.OP_SEAL,
                (("u32 slot", 4), ("data (at most 1024)", None)),
                "the data sealed to vmsp's identity (also kept in secure storage)",
            ),
            Message(
                "UNSEAL",
                vmsp.OP_UNSEAL,
                (("u32 slot (unused)", 4), ("sealed blob", None)),
                "the data, inside the same trustlet identity only",
            ),
            Message(
                "PUBLISH",
                vmsp.OP_PUBLISH,
                (("u32 mailbox slot (0-7)", 4), ("data", None)),
                "nothing: the data goes to the mailbox slot",
            ),
        ),
    }


# -- list ----------------------------------------------------------------------------------------
def list_json() -> dict[str, Any]:
    from vbsim.boot.trustlets import installed
    from vbsim.image import parse_image
    from vbsim.ium.images import TRUSTLETS
    from vbsim.policy import Component
    from vbsim.sk.ium.skci import ALLOWED_IDS

    rows = []
    formats = message_formats()
    for name, (trustlet_id, entry, extra, capabilities, parent_sd) in TRUSTLETS.items():
        parsed = parse_image(installed(name, Component()))
        policy = parsed.policy
        rows.append(
            {
                "image": name,
                "trustlet_id": trustlet_id,
                "known_as": trustlet_name(trustlet_id),
                "entry": entry,
                "routines": [entry, *extra],
                "capabilities": capabilities,
                "parent_sd": parent_sd,
                "allow_listed": trustlet_id in ALLOWED_IDS,
                "version": None if parsed.version is None else str(parsed.version),
                "policy_application_id": None if policy is None else policy.application_id,
                "policy": [] if policy is None else policy_entries_json(policy.entries),
                "messages": [m.to_json() for m in formats.get(name, ())],
            }
        )
    shipped = {row["trustlet_id"] for row in rows}
    return {
        "trustlets": rows,
        "allow_list": sorted(ALLOWED_IDS),
        "allow_listed_without_image": [
            {"trustlet_id": i, "known_as": trustlet_name(i)} for i in sorted(ALLOWED_IDS - shipped)
        ],
    }


@trustlet_app.command("list")
def list_command(as_json: JsonOption = False) -> None:
    """The trustlets vbsim ships: IDs, signed policies, the messages each accepts, the SK's
    allow-list."""
    try:
        report = list_json()
    except Exception as error:  # e.g. an unreadable model PKI
        fail(f"cannot build the trustlet images: {internal_error(error)}", as_json)
    if as_json:
        print(json_text(report))
        return
    table = Table(title="trustlets", header_style="bold")
    # Short columns that are never cut (an ID, a SID, a version): the version goes under the
    # image name, one part a line, so the table fits 80 columns.
    for column in ("image, version", "ID", "entry", "policy (.tPolicy)", "allowed"):
        table.add_column(column, no_wrap=True)
    for row in report["trustlets"]:
        policy = "\n".join(f"{p['policy']}={format_policy_value(p)}" for p in row["policy"])
        known = f" {row['known_as']}" if row["known_as"] else ""
        version = (row["version"] or "-").replace(" (", "\n(")
        table.add_row(
            escape(row["image"]) + f"\n[dim]{escape(version)}[/]",
            escape(f"{row['trustlet_id']}{known}"),
            escape(row["entry"]),
            escape(policy),
            "yes" if row["allow_listed"] else "[red]no[/]",
        )
    out = console()
    out.print(table)
    others = ", ".join(
        f"{r['trustlet_id']} ({r['known_as'] or '?'})" for r in report["allow_listed_without_image"]
    )
    messages = Table(
        title="messages each accepts ('vbsim trustlet run NAME --message HEX')",
        header_style="bold",
    )
    messages.add_column("image", no_wrap=True)
    messages.add_column("request", no_wrap=True)
    messages.add_column(escape("bytes, in order (little-endian; [n] = the rest)"), ratio=3)
    messages.add_column("reply", ratio=2)
    for row in report["trustlets"]:
        for message in row["messages"]:
            messages.add_row(
                escape(row["image"]),
                message["name"],
                escape(message["layout"]),
                escape(message["reply"]),
            )
    out.print(messages)
    out.print(f"Secure Kernel allow-list: IDs {', '.join(map(str, report['allow_list']))}")
    if others:
        out.print(f"allow-listed, no image shipped: {others}")


# -- run -----------------------------------------------------------------------------------------
def _resolve_image(image: str, policy_components: Any) -> tuple[str, bytes, int | None, str]:
    """(name, bytes, default trustlet ID, source) for a file path or a known trustlet name."""
    from vbsim.boot.trustlets import installed
    from vbsim.image import ImageFormatError, parse_image
    from vbsim.ium.images import TRUSTLETS
    from vbsim.policy import Component

    if image == "":  # not Path(""), the current directory
        raise CliError("IMAGE is empty: give a trustlet name (LsaIso.exe) or an image file")
    path = Path(image)
    if path.exists():
        data = read_input(path, "IMAGE")
        try:
            parsed = parse_image(data)
            default_id = None if parsed.policy is None else parsed.policy.application_id
        except ImageFormatError:
            default_id = None
        return path.name, data, default_id, f"file {path}"
    known = {name.lower(): name for name in TRUSTLETS}
    name = known.get(image.lower())
    if name is None:
        raise CliError(
            f"IMAGE {image!r}: no such file, and not a known trustlet "
            f"(known: {', '.join(TRUSTLETS)})"
        )
    component = policy_components.get(name, Component())
    data = installed(name, component)
    return name, data, TRUSTLETS[name][0], f"installed {name} {component.version}"


def _message(text: str | None) -> bytes:
    if text is None:
        return b""
    try:
        data = bytes.fromhex(text.replace(":", " "))
    except ValueError as error:
        raise CliError(f"--message {text!r} is not hexadecimal bytes ({error})") from error
    if len(data) > MAX_MESSAGE:
        raise CliError(f"--message is {len(data)} bytes; a message is at most {MAX_MESSAGE}")
    return data


def admission_checks(events: list[Event]) -> list[dict[str, Any]]:
    """Every SKCI check with its result, read from the ``skci.*`` events of one admission: SKCI
    traces each check it passed and the one that refused; checks after a refusal were not reached.
    """
    by_check = {e.mechanism.removeprefix("skci."): e for e in events}
    rows: list[dict[str, Any]] = []
    state = "passed"
    for check in SKCI_CHECKS:
        event = by_check.get(check)
        if event is None:
            rows.append(
                {
                    "check": check,
                    "result": state if state != "passed" else "not reached",
                    "from_trace": False,
                }
            )
            continue
        if event.outcome == "passed":
            rows.append({"check": check, "result": "passed", "from_trace": True})
            continue
        rows.append(
            {
                "check": check,
                "result": "failed",
                "status": event.detail.get("status"),
                "detail": event.detail.get("detail", ""),
                "from_trace": True,
            }
        )
        state = "not reached"
    return rows


def _event_json(event: Event) -> dict[str, Any]:
    return event.to_json()


def _vtl0_view(system: System, process: Process, reply: bytes) -> list[dict[str, Any]]:
    """What VTL0 sees of the trustlet, each row probed through a real VTL0 interface (§7)."""
    from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
    from vbsim.nt.process import Token
    from vbsim.sk.ium.process import IMAGE_BASE, PRIVATE_BASE
    from vbsim.sk.sscn import Service

    nt, machine = system.nt, system.machine
    assert nt is not None and machine is not None and nt.vsl is not None
    vp = machine.bsp
    rows: list[dict[str, Any]] = []

    def row(item: str, visible: str, result: str) -> None:
        rows.append({"item": item, "visible": visible, "result": result})

    shadow = nt.lookup_process(vp.cpu, process.pid)  # PsLookupProcessByProcessId
    row(
        "process object (NT's client-ID table)",
        "yes" if shadow == process else "no",
        f"PID {process.pid} {process.name}, SecurePid {process.secure_pid:#x}, "
        f"trustlet ID {process.trustlet_id}",
    )
    admin = nt.create_process(
        vp.cpu, "debugger.exe", Token("Administrator", admin=True, debug_privilege=True)
    )
    entries = nt.map_code(vp.cpu, admin, _PROBES)
    buffer = nt.allocate(vp.cpu, admin, PAGE_SIZE).base
    run = nt.run_user(vp.cpu, admin, entries["cli.trustlet.query_process"], process.pid, buffer)
    if run.terminated is None:
        status, value = run.returned
        secure = bool(value & 1)
        row(
            f"NtQueryInformationProcess class {PROCESS_IS_SECURE_CLASS:#x}",
            "yes" if status == NtStatus.SUCCESS else "no",
            f"{NtStatus.name_of(status)}: IsSecureProcess={int(secure)}, trustlet ID {value >> 1}",
        )
    from vbsim.nt.process import host_secure_thread_cookie

    cookie = host_secure_thread_cookie(machine.ram, process.eprocess) or None
    row(
        "thread (shadow ETHREAD)",
        "yes" if cookie is not None else "no",
        "no thread" if cookie is None else f"SecureThreadCookie {cookie:#x}",
    )
    for item, va in (
        ("image pages (NtReadVirtualMemory at the image base)", IMAGE_BASE),
        ("private memory (NtReadVirtualMemory at the trustlet's heap/stack)", PRIVATE_BASE),
    ):
        run = nt.run_user(
            vp.cpu, admin, entries["cli.trustlet.read_process"], process.pid, va, 16, buffer
        )
        if run.terminated is not None:
            row(item, "no", f"reader ended: {run.terminated.reason}")
            continue
        status, data = run.returned
        ok = status == NtStatus.SUCCESS
        row(
            item,
            "yes" if ok else "no",
            f"{NtStatus.name_of(status)}" + (f": {data.hex()}" if ok else ""),
        )
    row(
        "reply (what the trustlet chose to send)",
        "yes",
        # The whole reply is on the "run:" line; here, what VTL0 got, said as such.
        f"{len(reply)} bytes, all of them (the 'run:' line shows them)" if reply else "0 bytes",
    )
    status, _ = nt.vsl.call(vp.cpu, Service.DEBUG_PROCESS, process.secure_pid)
    row(
        "debugger attach (DEBUG_PROCESS)",
        "yes" if status == NtStatus.SUCCESS else "no",
        NtStatus.name_of(status),
    )
    if cookie is not None:
        status, _ = nt.vsl.call(vp.cpu, Service.GET_CONTEXT, cookie)
        row(
            "VTL1 thread context (GET_CONTEXT)",
            "yes" if status == NtStatus.SUCCESS else "no",
            NtStatus.name_of(status),
        )
    _, page_gpa = nt.alloc_kernel_page(vp.cpu)
    status, _ = nt.vsl.call(
        vp.cpu, Service.RETRIEVE_MAILBOX, process.secure_pid, 0, 0, page_gpa >> PAGE_SHIFT
    )
    row(
        "mailbox slot 0 without the key (RETRIEVE_MAILBOX)",
        "yes" if status == NtStatus.SUCCESS else "no",
        NtStatus.name_of(status),
    )
    return rows


def run_json(
    image: str, trustlet_id: int | None, preset_name: str, message_hex: str | None
) -> dict[str, Any]:
    """Boot, start, admit, run once, probe; raises :class:`CliError` on bad input."""
    from vbsim.boot.chain import boot
    from vbsim.hw.faults import GuestTermination
    from vbsim.nt.secure_process import create_secure_process, run_trustlet
    from vbsim.policy import PolicyError, preset

    try:
        policy = preset(preset_name)
    except PolicyError as error:
        raise CliError(str(error)) from error
    message = _message(message_hex)
    name, data, default_id, source = _resolve_image(image, policy.components)
    if trustlet_id is None:
        trustlet_id = default_id
    if trustlet_id is None:
        raise CliError(f"IMAGE {image!r} has no .tPolicy to take a trustlet ID from; pass --id")
    if not 0 <= trustlet_id < 1 << 64:
        raise CliError(f"--id {trustlet_id} does not fit a ULONGLONG")
    register_known_routines()
    report: dict[str, Any] = {
        "ok": True,
        "preset": preset_name,
        "image": {"name": path_text(name), "source": path_text(source), "size": len(data)},
        "trustlet_id": trustlet_id,
        "message": message.hex(),
        "booted": False,
        "admission": None,
        "process": None,
        "run": None,
        "vtl0_view": [],
        "stopped": None,
        "events": [],
    }
    system = boot(policy)
    report["booted"] = system.booted
    if not system.booted or system.nt is None or system.machine is None:
        report["stopped"] = f"boot halted: {system.halted}"
        return report
    report["vbs_running"] = system.vbs_running
    nt, vp = system.nt, system.machine.bsp
    mark = len(system.trace.events)
    try:
        status, process = create_secure_process(nt, vp.cpu, name, trustlet_id, image=data)
        skci = [
            e
            for e in system.trace.events[mark:]
            if e.kind == "ium" and e.mechanism.startswith("skci.")
        ]
        report["admission"] = {
            "status": status,
            "status_name": NtStatus.name_of(status),
            "admitted": process is not None,
            "checks": admission_checks(skci) if skci else [],
            "events": [_event_json(e) for e in skci],
        }
        if process is not None:
            report["process"] = {
                "pid": process.pid,
                "name": process.name,
                "secure_pid": process.secure_pid,
                "trustlet_id": process.trustlet_id,
            }
            run = run_trustlet(nt, vp.cpu, process, message)
            report["run"] = {
                "status": run.status,
                "status_name": NtStatus.name_of(run.status),
                "reply": run.reply.hex(),
                "reply_length": len(run.reply),
            }
            report["vtl0_view"] = _vtl0_view(system, process, run.reply)
    except GuestTermination as stop:
        report["stopped"] = f"the machine stopped: {stop}"
    report["events"] = [
        _event_json(e) for e in system.trace.events[mark:] if e.kind in _TRACE_KINDS
    ]
    system.machine.close()
    return report


def _succeeded(report: dict[str, Any]) -> bool:
    run = report["run"]
    return report["stopped"] is None and run is not None and run["status"] == NtStatus.SUCCESS


def print_run(out: Console, report: dict[str, Any]) -> None:
    image = report["image"]
    out.print(
        f"preset [bold]{safe(report['preset'])}[/]: starting [bold]{safe(image['name'])}[/] "
        f"({safe(image['source'])}, {image['size']} bytes) as trustlet ID "
        f"{report['trustlet_id']}"
    )
    if not report["booted"]:
        out.print(f"[bold red]{safe(report['stopped'])}[/]")
        return
    admission = report["admission"]
    if admission is not None:
        verdict = "[bold green]admitted[/]" if admission["admitted"] else "[bold red]refused[/]"
        out.print(f"admission: {verdict} — NT got {safe(admission['status_name'])}")
        # Each SKCI check once: in the table, with the trace event that decided it; only the
        # events the table does not show are listed after it (issue 12: they were shown twice).
        seq_of = {event["mechanism"]: event["seq"] for event in admission["events"]}
        shown: set[str] = set()
        if admission["checks"]:
            table = Table(title="SKCI checks", header_style="bold")
            for column in ("check", "result", "from", "detail"):
                table.add_column(column, overflow="fold")
            for check in admission["checks"]:
                result = check["result"]
                style = {"failed": "bold red", "passed": "green"}.get(result, "dim")
                detail = check.get("detail", "")
                if check.get("status"):
                    detail = f"{check['status']}: {detail}"
                mechanism = f"skci.{check['check']}"
                if check["from_trace"] and mechanism in seq_of:
                    source = f"trace #{seq_of[mechanism]}"
                    shown.add(mechanism)
                else:
                    source = "trace" if check["from_trace"] else "order"
                table.add_row(
                    safe(check["check"]), f"[{style}]{safe(result)}[/]", source, safe(detail)
                )
            out.print(table)
            out.print(
                "  (from = trace #N: the skci.* event that decided; order: implied by SKCI's order)"
            )
        for event in admission["events"]:
            if event["mechanism"] in shown:
                continue
            out.print(
                f"  trace #{event['seq']} {event['kind']} {event['mechanism']} → {event['outcome']}"
                f" ({visible(describe_detail(event['detail']))})",
                markup=False,  # wrapped at spaces to the screen, like the tables above it
            )
        if not admission["checks"] and not admission["admitted"]:
            out.print("  (no SKCI admission ran: NT did not reach the Secure Kernel)")
    process = report["process"]
    if process is not None:
        out.print(
            f"secure process: PID {process['pid']}, SecurePid {process['secure_pid']:#x}, "
            f"trustlet ID {process['trustlet_id']}"
        )
    run = report["run"]
    if run is not None:
        out.print(
            f"run: {run['status_name']}, reply {run['reply_length']} bytes"
            + (f": {safe(run['reply'])}" if run["reply"] else ""),
            soft_wrap=True,
        )
    if report["vtl0_view"]:
        table = Table(title="what VTL0 can see of it", header_style="bold")
        for column in ("item", "visible", "result"):
            table.add_column(column, overflow="fold")
        for item in report["vtl0_view"]:
            style = "green" if item["visible"] == "yes" else "red"
            table.add_row(
                safe(item["item"]), f"[{style}]{safe(item['visible'])}[/]", safe(item["result"])
            )
        out.print(table)
    if report["stopped"]:
        out.print(f"[bold red]{safe(report['stopped'])}[/]")


@trustlet_app.command("run")
def run_command(
    image: Annotated[
        str,
        typer.Argument(
            metavar="IMAGE",
            help="A trustlet image file, or a known trustlet name (LsaIso.exe, vmsp.exe).",
            show_default=False,
        ),
    ],
    trustlet_id: Annotated[
        int | None,
        typer.Option(
            "--id", help="Trustlet ID to request (default: the image's policy ApplicationId)."
        ),
    ] = None,
    preset_name: Annotated[
        str,
        typer.Option(
            "--preset", metavar="NAME", help="vbs-off, vbs, vbs-hvci, hardened, legacy-2019."
        ),
    ] = "vbs",
    message: Annotated[
        str | None,
        typer.Option(
            metavar="HEX",
            help="The message to send, as hex bytes (at most 4096); 'vbsim trustlet list' "
            "shows each trustlet's formats.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Boot PRESET, start IMAGE as a trustlet, show admission, the reply and VTL0's view."""
    try:
        report = run_json(image, trustlet_id, preset_name, message)
    except CliError as error:
        fail(str(error), as_json)
    except Exception as error:  # never a traceback: a vbsim bug is reported on one line too
        fail(internal_error(error), as_json)
    report["ok"] = _succeeded(report)  # ok is the outcome: false when exiting 1
    if as_json:
        print(json_text(report))
    else:
        print_run(console(), report)
    if not report["ok"]:
        raise typer.Exit(1)


# -- export --------------------------------------------------------------------------------------
@trustlet_app.command("export")
def export_command(
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME", help="A shipped trustlet (LsaIso.exe, vmsp.exe).", show_default=False
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="The file to write.",
            show_default=False,
            parser=path_arg,
        ),
    ],
    preset_name: Annotated[
        str,
        typer.Option(
            "--preset", metavar="NAME", help="Whose installed version to export (its components)."
        ),
    ] = "vbs",
    as_json: JsonOption = False,
) -> None:
    """Write the signed trustlet image NAME as installed, to inspect, verify or tamper with.

    The file is the PE the Secure Kernel admits: Authenticode-signed by the model PKI, with its
    .tPolicy; 'vbsim image verify FILE' and 'osslsigncode verify' read it.
    """
    import hashlib

    from vbsim.boot.trustlets import installed
    from vbsim.cli.output import OutputError, check_output, write_atomically
    from vbsim.ium.images import TRUSTLETS
    from vbsim.policy import Component, PolicyError, preset

    known = {known.lower(): known for known in TRUSTLETS}
    image = known.get(name.lower())
    if image is None:
        fail(
            f"NAME {visible(repr(name))}: not a shipped trustlet (known: {', '.join(TRUSTLETS)})",
            as_json,
        )
    try:
        policy = preset(preset_name)
        target = check_output(output, f"{image}")
    except (PolicyError, OutputError) as error:
        fail(str(error), as_json)
    component = policy.components.get(image, Component())
    try:
        data = installed(image, component)
    except Exception as error:  # e.g. an unreadable model PKI
        fail(f"cannot build {image}: {internal_error(error)}", as_json)
    try:
        write_atomically(target, data)
    except OSError as error:
        fail(f"output {visible(repr(str(output)))}: cannot write it ({error.strerror})", as_json)
    from vbsim.signing import model_pki

    root = str(model_pki().path("root.pem"))
    summary = {
        "ok": True,
        "image": image,
        "version": component.version,
        "output": path_text(target),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "model_root": root,
    }
    if as_json:
        print(json_text(summary))
        return
    console().print(
        f"wrote {visible(path_text(target))}: {image} {component.version}, {len(data)} bytes, "
        f"sha256 {summary['sha256']}\n"
        f"check it: vbsim image verify {shell_word(target)}\n"
        f"      or: osslsigncode verify -CAfile {shell_word(root)} -in {shell_word(target)}",
        markup=False,
        soft_wrap=True,
    )
