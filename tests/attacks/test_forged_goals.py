"""Goals a payload cannot meet by doing something else (a third audit's forgeries).

Each test keeps the scenario's host-side steps as they are (the marks they set included) and
changes only what the payload does; the goal must not be met:

- D9: the payload calls the gadget itself instead of letting NT's notify dispatch call it;
- SEED-U0-SECURE-SYSCALL: the user overwrites its own buffer; no secure service ran;
- SEED-IUM-SYSCALL: K0 writes the hive value through NT itself; no trustlet's call was forwarded;
- SEED-IUM-K0: K0 carries the marker to the probe in its message; the probe read nothing;
- D6: a page HVCI validated (a signed driver's) reaches WRITABLE by HVCI's own rules;
- D3: K0 fills the EDR's log instead of removing its callback;
- D5: K0 remaps g_CiOptions' VA instead of writing the variable (that is D5-REMAP's row).
"""

from __future__ import annotations

import os
import struct
from dataclasses import replace

import pytest

from vbsim.attacks.catalogue import SCENARIOS
from vbsim.attacks.catalogue import d01_d05_data_only as d01
from vbsim.attacks.catalogue import d06_sk_state as d6
from vbsim.attacks.catalogue import d09_kcfg as d9
from vbsim.attacks.catalogue import seed_statements as seeds
from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import nt_of
from vbsim.attacks.context import AttackContext
from vbsim.attacks.model import Outcome, Scenario
from vbsim.attacks.runner import run
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SHIFT
from vbsim.nt import drivers, kcfg, notify, registry
from vbsim.ntstatus import NtStatus
from vbsim.sk.sscn import Service


def _scenario(scenario_id: str) -> Scenario:
    return next(s for s in SCENARIOS if s.id == scenario_id)


def _call_gadget(cpu: Cpu, gadget: int) -> int:
    cpu.call(gadget)
    return 1


def _d9_direct(ctx: AttackContext) -> None:
    nt = ctx.booted.nt
    assert nt is not None
    gadget = nt.space.routines[kcfg.GADGET]
    ctx.notes["replaced"] = ctx.kernel(_call_gadget, gadget)
    ctx.notes["dispatch_mark"] = ctx.trace.now
    with ctx.flow():
        ctx.notes["victim"] = ctx.process(admin=False, name="d9.exe").pid


@pytest.mark.parametrize("scenario_id", ["D9", "D9-BITMAP", "D9-REMAP"])
def test_d9_counts_only_the_gadget_run_nts_dispatch_made(scenario_id: str) -> None:
    result, ctx = run(replace(_scenario(scenario_id), steps=_d9_direct), "hardened")
    assert ctx.trace.ran(kcfg.GADGET) == [(0, 0)]  # the payload's own call did run it
    assert result.outcome != Outcome.SUCCEEDED
    assert d9.d9_goal is _scenario(scenario_id).goal_met


def _scribble(cpu: Cpu, buffer: int) -> int:
    cpu.write(buffer, b"\xbb" * 64)
    return 0


def _u0_scribbles(ctx: AttackContext) -> None:
    process = ctx.process(admin=False, name="user.exe")
    buffer = ctx.user_buffer(process)
    ctx.notes["process"], ctx.notes["buffer"] = process, buffer
    ctx.notes["mark"] = ctx.trace.now
    ctx.user(_scribble, buffer, process=process)


def _set_value(cpu: Cpu, key: str, value: int) -> bool:
    return registry.set_value(nt_of(cpu), cpu, key, value)


def _k0_writes_hive(ctx: AttackContext) -> None:
    ctx.notes["mark"] = ctx.trace.now
    ctx.kernel(_set_value, seeds.IUM_REGISTRY_KEY, seeds.IUM_REGISTRY_VALUE)


def _carry(cpu: Cpu, target_va: int, loot_va: int, image: bytes) -> int:
    marker = cpu.read(target_va, 32)
    message = struct.pack("<IIQQ", seeds.PROBE_READ, 0, 0, 0) + marker
    return seeds._run_probe(cpu, message, loot_va, image)


def _k0_carries_marker(ctx: AttackContext) -> None:
    marker = b"NT-KERNEL-SECRET" + os.urandom(16)
    ctx.notes["marker"] = marker
    target_va, _ = ctx.kernel_page()
    ctx.kernel(lambda vp: vp.write(target_va, marker))
    loot_va, ctx.notes["loot_gpa"] = ctx.kernel_page()
    ctx.notes["status"] = ctx.kernel(_carry, target_va, loot_va, seeds.probe_image())


@pytest.mark.parametrize(
    ("scenario_id", "steps"),
    [
        ("SEED-U0-SECURE-SYSCALL", _u0_scribbles),
        ("SEED-IUM-SYSCALL", _k0_writes_hive),
        ("SEED-IUM-K0", _k0_carries_marker),
    ],
)
@pytest.mark.parametrize("name", ["vbs", "hardened"])
def test_seed_goals_need_what_the_statement_says(
    scenario_id: str, steps: object, name: str
) -> None:
    assert callable(steps)
    result, _ = run(replace(_scenario(scenario_id), steps=steps), name)
    assert result.outcome != Outcome.SUCCEEDED, result.detail


def _recycle(vp: Cpu, own_pfn: int) -> list[int]:
    """K0: hand the attacker's page back to NT so the next signed driver takes it for a code
    page (NT's free list is LIFO, one page ahead), then ask HVCI's sanctioned transition."""
    nt = nt_of(vp)
    held = nt.alloc_page(vp)
    nt.free_page(vp, own_pfn)
    nt.free_page(vp, held)
    load = drivers.load_driver(nt, vp, drivers.SAMPLE_DRIVER)
    assert nt.vsl is not None
    status, _ = nt.vsl.call(vp, Service.MAKE_PROTECTED_PAGE_WRITABLE, own_pfn)
    return [int(load), int(status)]


def _d6_recycles(ctx: AttackContext) -> None:
    sk = ctx.booted.sk
    assert sk is not None
    _, own_gpa = ctx.kernel_page()
    own_pfn = own_gpa >> PAGE_SHIFT
    table_gpa = int(sk.hvci.states_gpa)
    ctx.notes.update(
        table_gpa=table_gpa, own_pfn=own_pfn, before=d6._byte(ctx, table_gpa + own_pfn)
    )
    ctx.notes["statuses"] = ctx.kernel(_recycle, own_pfn)


@pytest.mark.parametrize("name", ["vbs-hvci", "hardened"])
def test_d6_needs_the_forged_byte_not_hvcis_own_transition(name: str) -> None:
    """A page the SK validated (a signed driver's, recycled from the attacker) reaches WRITABLE
    through MAKE_PROTECTED_PAGE_WRITABLE by HVCI's rules; that is not D6's forged state."""
    result, ctx = run(replace(_scenario("D6"), steps=_d6_recycles), name)
    assert ctx.notes["statuses"] == [NtStatus.SUCCESS, NtStatus.SUCCESS]  # the path was taken
    assert result.outcome != Outcome.SUCCEEDED


def _fill_log(cpu: Cpu, modules: int, name: str) -> int:
    """K0: the EDR's log count := full, in its own unprotected .data (the callback stays)."""
    base, _ = d01.find_module(cpu, modules, name)
    _, data_rva = notify.edr_rvas()
    cpu.write_u64(base + data_rva, notify.EDR_LOG_MAX)
    return 0


def _d3_fills_log(ctx: AttackContext) -> None:
    nt = ctx.booted.nt
    assert nt is not None
    ctx.notes["seen_before"] = len(d01.edr_log(ctx))
    modules = drivers.module_list_head(nt)
    ctx.notes["removed"] = ctx.kernel(_fill_log, modules, notify.EDR_DRIVER)
    ctx.notes["victim"] = ctx.process(admin=False, name="payload.exe").pid


def test_d3_needs_the_callback_removed_not_a_full_log() -> None:
    result, ctx = run(replace(_scenario("D3"), steps=_d3_fills_log), "hardened")
    assert ctx.notes["victim"] not in d01.edr_log(ctx)  # not recorded ...
    assert d01.edr_registered(ctx)  # ... but the EDR's routine is still registered
    assert result.outcome != Outcome.SUCCEEDED
    real, real_ctx = run(_scenario("D3"), "hardened")
    assert real.outcome == Outcome.SUCCEEDED and not d01.edr_registered(real_ctx)


def _d5_by_remap(ctx: AttackContext) -> None:
    """D5's host steps, with D5-REMAP's payload in place of the write."""
    nt = ctx.booted.nt
    assert nt is not None
    nt.driver_store[d01.UNSIGNED] = d01.unsigned_image()
    ctx.notes["ci_options"] = drivers.ci_options_va(nt)
    ctx.notes["ci_gpa"] = d01._ci_options_gpa(ctx)
    own_va, own_gpa = ctx.kernel_page()
    ctx.kernel(d01._remap_ci, drivers.ci_options_va(nt), own_va, own_gpa)
    d01._load_step(ctx)


def test_d5_is_the_write_and_d5_remap_the_remap() -> None:
    """On vbs the remap loads the unsigned driver (D5-REMAP succeeds) while g_CiOptions' own
    page still holds its value, so D5's goal (the variable changed) is not met that way."""
    result, ctx = run(replace(_scenario("D5"), steps=_d5_by_remap), "vbs")
    assert ctx.notes["load"] == "STATUS_SUCCESS"  # NT's DSE read 0 through the remapped VA
    assert result.outcome != Outcome.SUCCEEDED
    outcomes = {name: run(_scenario("D5-REMAP"), name)[0].outcome for name in ("vbs", "hardened")}
    assert outcomes == {"vbs": Outcome.SUCCEEDED, "hardened": Outcome.BLOCKED}
