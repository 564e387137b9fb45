"""Every cell of the live access matrix, and its deciding mechanism, for every preset.

The expected table is DESIGN.md's "four areas" rule, cell by cell:

    VTL1 ring 0 reaches everything (through the hypervisor); VTL0 ring 0 reaches everything in
    VTL0 and nothing of VTL1; VTL1 ring 3 reaches only itself directly and the Secure Kernel
    through system calls; VTL0 ring 3 is the least powerful.

with the mechanism that the sources name for each boundary:

- [VSM §3.2/§3.4] vsm-spec.md: SLAT protections set by VTL1 restrict VTL0 only; a VTL never
  restricts itself, so VTL1 (kernel and IUM alike) has SLAT access to all of VTL0's memory.
- [VSM §5.3] vsm-spec.md: a VTL call or return from CPL != 0 raises #UD ("cpl:#UD").
- [VBSI §1.3] vbs-internals.md: SK memory and trustlet private pages have no VTL0 access after
  PHASE3_INIT; trustlet image pages stay readable by VTL0 (R only, never executable from it);
  "there is no separate SLAT restriction for VTL1 itself".
- [VBSI §2.1] the cross-VTL paths: secure call (NT → SK, CPL0), normal call (SK → NT, answered by
  NT), secure system call (IUM → SK, no hypervisor involved).
- [VBSI §2.6] a secure system call has bit 27 set (0x0800_0000): from VTL0 it reaches NT's
  dispatcher, which knows no such service (STATUS_INVALID_SYSTEM_SERVICE).
- [VBSI §5.1] HVCI with MBEC: "user pages are never KMX, so the kernel cannot execute user
  memory"; NT's boot-image code is validated (R|KX).
- [SDM 4.6] Intel SDM Vol. 3A §4.6: a CPL3 access to a supervisor page faults (U/S,
  "paging.us"); an address with no present entry faults ("paging.p").

An allowed read, write or execute names the translation that served it: a walk (``paging``) or
an entry the TLB already held (``tlb``); which of the two is a question of what the TLB holds, not
of any boundary, so the test accepts either (``ANY_TRANSLATION``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from vbsim.attacks import matrix, probes
from vbsim.attacks.matrix import ACCESS_OPS, AREAS, OPS, Cell, access_matrix, matrix_json
from vbsim.attacks.matrix_view import Key, matrix_key, matrix_table
from vbsim.hw.cpu import Cpu

PRESETS = ("vbs-off", "vbs", "vbs-hvci", "hardened", "legacy-2019")
ANY_TRANSLATION = "paging|tlb"
YES = ("allowed", ANY_TRANSLATION)
NA = ("-", "no VTL1")
NO_GATE = ("-", "no gate")


def no(mechanism: str) -> tuple[str, str]:
    return ("blocked", mechanism)


def via(gate: str) -> tuple[str, str]:
    return ("allowed", gate)


def rwx(value: tuple[str, str]) -> dict[str, tuple[str, str]]:
    return {"read": value, "write": value, "execute": value}


def cell(
    access: dict[str, tuple[str, str]],
    call: tuple[str, str],
    granted: dict[str, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    return {"ops": {**access, "call": call}, "granted": granted or {}}


# -- the table with VBS running (preset "vbs"); the other presets are stated as differences -------
def vbs_table() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        # VTL0 ring 3 is the least powerful (DESIGN.md).
        # Its own pages: mapped user RW / RX by NT; nothing to call in itself.
        ("VTL0 user", "VTL0 user"): cell(rwx(YES), NO_GATE),
        # NT's pages are supervisor-only [SDM 4.6]; syscall is its way in, NtTestAlert succeeds.
        ("VTL0 user", "VTL0 kernel"): cell(rwx(no("paging.us")), via("syscall")),
        # At the trustlet's address (a kernel VA here) the U/S bit stops it [SDM 4.6]; with the
        # PTE NT built on purpose, SLAT does: trustlet private pages have no VTL0 access and its
        # image pages are R only, so not executable [VBSI §1.3].  A VTL call from CPL3 is #UD
        # [VSM §5.3].
        ("VTL0 user", "VTL1 user"): cell(rwx(no("paging.us")), no("cpl:#UD"), rwx(no("slat"))),
        # SK pages: no VTL0 access after PHASE3_INIT [VBSI §1.3]; the IUM secure-syscall number
        # lands in NT, which has no such service [VBSI §2.6].
        ("VTL0 user", "VTL1 kernel"): cell(
            rwx(no("paging.us")),
            no("nt-dispatch:0x0800000B=STATUS_INVALID_SYSTEM_SERVICE"),
            rwx(no("slat")),
        ),
        # VTL0 ring 0 reaches everything in VTL0 (DESIGN.md): its own tables map any VTL0 page,
        # SLAT without HVCI grants RWX to all VTL0 pages [VSM §3.4 default mask]; it enters user
        # code with sysret and the routine runs at CPL3.
        ("VTL0 kernel", "VTL0 user"): cell(rwx(YES), via("sysret")),
        ("VTL0 kernel", "VTL0 kernel"): cell(rwx(YES), NO_GATE),
        # ... and nothing of VTL1: a PTE of its own does not help, SLAT refuses [VBSI §1.3].
        # NT has no gate into trustlet code (it only asks the SK to resume a thread).
        ("VTL0 kernel", "VTL1 user"): cell(rwx(no("slat")), NO_GATE),
        # A secure call is its one way into VTL1 [VBSI §2.1]; the SK answers IS_TRUSTLET_RUNNING.
        ("VTL0 kernel", "VTL1 kernel"): cell(rwx(no("slat")), via("secure-call")),
        # VTL1 ring 3 reaches only itself directly (DESIGN.md): the process's VAs are not mapped
        # in the trustlet's tables (paging.p), VTL0 kernel VAs are the SK's supervisor half
        # (paging.us) [SDM 4.6].  With a PTE the SK grants, nothing stops it: VTL1's SLAT does
        # not restrict VTL1 [VSM §3.2, VBSI §1.3] (secure sections share VTL0 pages, §4.4).
        ("VTL1 user", "VTL0 user"): cell(rwx(no("paging.p")), NO_GATE, rwx(YES)),
        # VTL return from CPL3: #UD [VSM §5.3].
        ("VTL1 user", "VTL0 kernel"): cell(rwx(no("paging.us")), no("cpl:#UD"), rwx(YES)),
        ("VTL1 user", "VTL1 user"): cell(rwx(YES), NO_GATE),
        # ... and the Secure Kernel through system calls: the secure service table serves
        # IumGetIdk [VBSI §2.1, §2.6]; SK pages are supervisor-only [SDM 4.6].
        ("VTL1 user", "VTL1 kernel"): cell(rwx(no("paging.us")), via("secure-syscall")),
        # VTL1 ring 0 reaches everything (DESIGN.md): no SLAT restriction applies to VTL1
        # [VSM §3.2]; it asks NT through a normal call and NT's answer comes back [VBSI §2.5];
        # it enters the trustlet's user code itself (sysret), which runs at VTL1 CPL3.
        ("VTL1 kernel", "VTL0 user"): cell(rwx(YES), NO_GATE),
        ("VTL1 kernel", "VTL0 kernel"): cell(rwx(YES), via("normal-call")),
        ("VTL1 kernel", "VTL1 user"): cell(rwx(YES), via("sysret")),
        ("VTL1 kernel", "VTL1 kernel"): cell(rwx(YES), NO_GATE),
    }


def expected(preset: str) -> dict[tuple[str, str], dict[str, Any]]:
    table = vbs_table()
    if preset == "vbs-off":
        # No hypervisor, no VTL1 (the preset's description): the VTL0 half is unchanged and no
        # cell involving VTL1 has anything to probe.
        for source in AREAS:
            for target in AREAS:
                if "VTL1" in source or "VTL1" in target:
                    table[(source, target)] = cell(rwx(NA), NA)
    if preset in ("vbs-hvci", "hardened"):
        # HVCI with MBEC: user pages are never KMX, so NT cannot execute user memory, even through
        # a supervisor mapping of its own [VBSI §5.1].  NT's own (validated) code still runs.
        table[("VTL0 kernel", "VTL0 user")]["ops"]["execute"] = no("slat")
    # legacy-2019 (build A's secure-call numbers, unchecked secure-call parameters) changes none
    # of these boundaries: its bugs are in what the SK accepts as secure-call parameters (A8,
    # vbs-internals §6), not in SLAT, paging or the gates.
    return table


_CACHE: dict[str, list[Cell]] = {}


def matrix_of(preset: str) -> list[Cell]:
    if preset not in _CACHE:
        _CACHE[preset] = access_matrix(preset)
    return _CACHE[preset]


def _matches(actual: tuple[str, str], wanted: tuple[str, str]) -> bool:
    if wanted[1] == ANY_TRANSLATION:
        return actual[0] == wanted[0] and actual[1] in ANY_TRANSLATION.split("|")
    return actual == wanted


@pytest.mark.parametrize("preset", PRESETS)
def test_every_cell_and_mechanism(preset: str) -> None:
    cells = {(c.source, c.target): c for c in matrix_of(preset)}
    assert set(cells) == {(s, t) for s in AREAS for t in AREAS}
    wrong = []
    for pair, want in expected(preset).items():
        got = cells[pair]
        for op in OPS:
            actual = (got.results[op], got.mechanisms[op])
            if not _matches(actual, want["ops"][op]):
                wrong.append(f"{pair} {op}: {actual} != {want['ops'][op]}")
        granted = {op: (got.granted[op], got.granted_mechanisms[op]) for op in got.granted}
        if set(granted) != set(want["granted"]):
            wrong.append(f"{pair} granted ops {sorted(granted)} != {sorted(want['granted'])}")
        for op, value in want["granted"].items():
            if op in granted and not _matches(granted[op], value):
                wrong.append(f"{pair} +PTE {op}: {granted[op]} != {value}")
    assert not wrong, "\n".join(wrong)


# -- the probes can fail: a planted wrong answer changes cells ---------------------------------
def _run_planted(monkeypatch: pytest.MonkeyPatch, plant: Callable[[], None]) -> dict[Any, Cell]:
    plant()
    return {(c.source, c.target): c for c in access_matrix("vbs")}


def test_skipping_the_access_blocks_what_was_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe that never touches the target obtains nothing: every allowed access turns to
    'blocked', with no refusal to name."""
    cells = _run_planted(
        monkeypatch, lambda: monkeypatch.setattr(probes, "access", lambda *a, **k: None)
    )
    for pair in [("VTL1 kernel", "VTL0 kernel"), ("VTL0 kernel", "VTL0 user")]:
        for op in ACCESS_OPS:
            assert cells[pair].results[op] == "blocked", (pair, op)
            assert cells[pair].mechanisms[op] == "-", (pair, op)
    granted = cells[("VTL1 user", "VTL0 user")].granted
    assert set(granted.values()) == {"blocked"}


def test_a_routine_run_elsewhere_is_no_execute(monkeypatch: pytest.MonkeyPatch) -> None:
    """The old rule ("any probe routine ran anywhere") would turn NT's refused execute of SK code
    into 'allowed' when the trustlet runs its own probe routine meanwhile; the routine's own
    record of where it ran (VTL1 CPL3, not VTL0 CPL0) keeps the cell blocked."""
    real_run = matrix.Prober._run

    def run_and_let_the_trustlet_run(self: matrix.Prober, *args: Any) -> bytes:
        out = real_run(self, *args)
        if args[2] == "execute" and self.vbs:  # args: source, target, op, gate, granted
            t = self.targets["VTL1 user"]
            message = probes.trustlet_message(
                probes.OP_EXECUTE, AREAS.index("VTL1 user"), va=t.code_va
            )
            matrix.run_trustlet(self.nt, self.vp.cpu, self.trustlet, message)
        return out

    cells = _run_planted(
        monkeypatch,
        lambda: monkeypatch.setattr(matrix.Prober, "_run", run_and_let_the_trustlet_run),
    )
    k0 = cells[("VTL0 kernel", "VTL1 kernel")]
    assert (k0.results["execute"], k0.mechanisms["execute"]) == ("blocked", "slat")
    u0 = cells[("VTL0 user", "VTL1 user")]
    assert (u0.results["execute"], u0.mechanisms["execute"]) == ("blocked", "paging.us")


def test_a_normal_call_nt_does_not_serve_is_no_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The VTL1-kernel → VTL0-kernel call counts only with NT's answer: a normal call NT has no
    handler for comes back NOT_IMPLEMENTED, and the cell is blocked."""
    cells = _run_planted(
        monkeypatch, lambda: monkeypatch.setattr(probes, "NORMAL_ALLOCATE_PAGES", 0x7F)
    )
    assert cells[("VTL1 kernel", "VTL0 kernel")].results["call"] == "blocked"
    assert cells[("VTL1 user", "VTL1 kernel")].results["call"] == "allowed"  # untouched


def test_an_sk_entry_at_cpl0_is_no_user_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The VTL1-kernel → VTL1-user call counts only if the trustlet's code ran at VTL1 CPL3: a
    'call' that skips sysret and fetches the user page at CPL0 is refused by SMEP."""

    def enter_without_sysret(cpu: Any, target: int, root: int, entry: int, loot: int) -> None:
        probes.begin(cpu, probes.OP_CALL, target)
        saved = cpu.read_cr(3)
        cpu.mov_to_cr(3, root)
        try:
            cpu.write_u64(loot, cpu.call(entry) or 0)
        finally:
            cpu.mov_to_cr(3, saved)

    cells = _run_planted(
        monkeypatch, lambda: monkeypatch.setattr(probes, "enter_user", enter_without_sysret)
    )
    sk = cells[("VTL1 kernel", "VTL1 user")]
    assert (sk.results["call"], sk.mechanisms["call"]) == ("blocked", "smep")


def test_a_probe_run_in_another_mode_gives_no_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """NT's probes run as Secure Kernel code instead: they would reach VTL1, but a cell counts
    only from a probe that began in the prober's own mode (VTL0 CPL0), so the row has none."""
    real_k0 = matrix.Prober._as_k0

    def k0_as_k1(self: matrix.Prober, routine: Callable[..., Any], *args: Any) -> None:
        if routine is probes.kernel_op:
            self._as_k1(routine, *args[:4], self.sk.space.phys_va(0) if self.sk else 0, *args[5:])
            return
        real_k0(self, routine, *args)

    cells = _run_planted(
        monkeypatch, lambda: monkeypatch.setattr(matrix.Prober, "_as_k0", k0_as_k1)
    )
    for target in AREAS:
        got = cells[("VTL0 kernel", target)]
        for op in ACCESS_OPS:
            assert (got.results[op], got.mechanisms[op]) == ("-", "prober not run in its mode")


# -- what is shown ------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [80, 100, 160])
def test_the_table_never_cuts_a_mechanism(width: int) -> None:
    from rich.console import Console

    cells = matrix_of("vbs")
    key = Key()
    console = Console(width=width, record=True, color_system=None)
    console.print(matrix_table(cells, "vbs", key))
    table = console.export_text()
    for line in matrix_key(key):
        console.print(line)
    text = table + console.export_text()
    assert "…" not in text
    if width >= 100:  # the table itself fits 100 columns; the key is prose, wrapped to the width
        assert max(len(line) for line in table.splitlines()) <= 100
    assert "nt-dispatch:0x0800000B=STATUS_INVALID_SYSTEM_SERVICE" in text.replace("\n", "")
    assert "134217739" not in text
    shown = {m for c in cells for m in c.mechanisms.values() if m not in ("-", "no gate")}
    flat = text.replace("\n", " ")
    assert all(m in flat for m in shown if m not in ANY_TRANSLATION.split("|")), shown


def test_json_has_every_cell_with_mechanisms() -> None:
    data = matrix_json(matrix_of("vbs"))
    assert data["areas"] == list(AREAS)
    assert len(data["cells"]) == 16
    by = {(c["from"], c["to"]): c for c in data["cells"]}
    assert by[("VTL1 kernel", "VTL0 kernel")]["call"] == "allowed"
    assert by[("VTL1 kernel", "VTL0 kernel")]["mechanism"]["call"] == "normal-call"
    assert by[("VTL0 user", "VTL1 kernel")]["granted_mechanism"] == rwx_names("slat")


def rwx_names(mechanism: str) -> dict[str, str]:
    return {op: mechanism for op in ACCESS_OPS}


def test_a_probe_touching_its_own_page_is_no_access_to_the_target() -> None:
    """Read and execute count only for the target's own bytes: NT's probe reading NT's marker
    and running NT's copy of the probe routine, whatever target it was given, leaves the VTL1
    cells blocked (each area's marker is its own; an execution counts from the target's code
    page, the GPA the processor fetched from).  A sixth audit had both come out 'allowed'."""
    prober = matrix.Prober("vbs")
    real_access = probes.access
    own = prober.targets["VTL0 kernel"]

    def own_page_access(cpu: Cpu, op: int, va: int, loot: int) -> None:
        if (cpu.vtl, cpu.cpl) == (0, 0) and op == probes.OP_EXECUTE:
            answer = cpu.call(own.code_va)
            cpu.write_u64(loot, answer if isinstance(answer, int) else 0)
            return
        if (cpu.vtl, cpu.cpl) == (0, 0) and op == probes.OP_READ:
            cpu.write(loot, cpu.read(own.data_va, len(probes.MARKER)))
            return
        real_access(cpu, op, va, loot)

    try:
        probes.access = own_page_access
        for target in ("VTL1 user", "VTL1 kernel"):
            for op in ("read", "execute"):
                assert prober.probe("VTL0 kernel", target, op).result == "blocked", (target, op)
    finally:
        probes.access = real_access
        prober.machine.close()


def test_a_vtl_return_from_user_mode_is_derived_not_assumed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The VTL1-user → VTL0-kernel call cell comes from the trace: with the CPL3 #UD check of
    VMCALL removed (a broken platform), the trustlet's own VTL return lands in NT's mode and the
    cell says allowed by vtl-return; the SK's later VTL return does not count (it comes from
    VTL1 CPL0, not from the prober's mode)."""
    from vbsim.hw import vp as vp_module

    real = vp_module.VirtualProcessor.vmcall
    armed: list[bool] = []

    def vmcall_at_any_cpl(self: vp_module.VirtualProcessor) -> None:
        if armed and self.p.cpl == 3:
            self.exits.vmcall(self)
            return
        real(self)

    # before the machine exists: a processor's Cpu binds its instructions when it is built
    monkeypatch.setattr(vp_module.VirtualProcessor, "vmcall", vmcall_at_any_cpl)
    prober = matrix.Prober("vbs")
    try:
        honest = prober.probe("VTL1 user", "VTL0 kernel", "call")
        assert (honest.result, honest.mechanism) == ("blocked", "cpl:#UD")
        armed.append(True)
        broken = prober.probe("VTL1 user", "VTL0 kernel", "call")
        assert (broken.result, broken.mechanism) == ("allowed", "vtl-return")
    finally:
        prober.machine.close()
