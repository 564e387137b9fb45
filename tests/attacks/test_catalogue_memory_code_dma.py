"""A3, A5, A6, A8, A9, A13, A14: every preset gives the public record's outcome for the record's
reason (the deciding mechanism and the events around it, read from the trace), and each verdict
comes from the goal: change the mechanism that stopped the attack — or the capability that made
it work — and the same steps give the other outcome."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from tests.attacks.record import record_cases, run_once

from vbsim.attacks.catalogue import a03_a14_memory_code_dma as mcd
from vbsim.attacks.catalogue import by_id
from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import runs
from vbsim.attacks.context import AttackContext
from vbsim.attacks.goals import vtl0_rights
from vbsim.attacks.model import PRESET_ORDER, Capability, Outcome, Scenario
from vbsim.attacks.runner import run
from vbsim.boot.logon import DEFAULT_LOGON
from vbsim.guest import hvcall
from vbsim.hw.slat import R, W
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, PTE_ADDR_MASK
from vbsim.nt import drivers
from vbsim.nt.lsass import nt_owf
from vbsim.policy import PRESETS, Legacy
from vbsim.sk.layouts import Hvci
from vbsim.trace import Event

SCENARIOS: list[Scenario] = list(mcd.SCENARIOS)
VBS_PRESETS = [p for p in PRESET_ORDER if p != "vbs-off"]
HVCI = ["vbs-hvci", "hardened"]
NO_HVCI = ["vbs-off", "vbs", "legacy-2019"]
CHECKED = ["vbs", "vbs-hvci", "hardened"]


_run = run_once


def _events(
    ctx: AttackContext, kind: str | None = None, mechanism: str | None = None, outcome: str = ""
) -> list[Event]:
    return [
        e
        for e in ctx.trace.events[ctx.attack_start :]
        if (kind is None or e.kind == kind)
        and (mechanism is None or e.mechanism == mechanism)
        and (not outcome or e.outcome == outcome)
    ]


def _ram(ctx: AttackContext, gpa: int, length: int = 8) -> bytes:
    assert ctx.system is not None and ctx.system.machine is not None
    return ctx.system.machine.ram.read(gpa, length)


# -- the record, per preset ----------------------------------------------------------------------
#: Known model gaps that give a wrong outcome (reported, pinned with strict xfails).
MODEL_GAPS: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize(("scenario", "preset"), record_cases(SCENARIOS, MODEL_GAPS))
def test_outcome_matches_public_record(scenario: Scenario, preset: str) -> None:
    result, _ = _run(scenario.id, preset)
    assert result.outcome == scenario.expected[preset], (result.mechanism, result.detail)


def test_scenarios_are_in_the_catalogue_with_an_expectation_for_every_preset() -> None:
    ids = [s.id for s in SCENARIOS]
    assert ids == [
        "A3",
        "A3-RWX",
        "A5",
        "A6",
        "A6-KDP",
        "A8",
        "A8-UNDO",
        "A9",
        "A13",
        "A14",
        "A14-PHYS",
        "A14-PHYS-VTL1",
    ]
    for scenario in SCENARIOS:
        assert by_id(scenario.id) is scenario
        assert set(scenario.expected) == set(PRESET_ORDER)
        for preset in PRESET_ORDER:
            applicable = scenario.applicable(PRESETS[preset])
            assert applicable == (scenario.expected[preset] != Outcome.NOT_APPLICABLE), preset


#: (scenario, presets) → what the verdict names as the stopper.
DECIDING: dict[tuple[str, tuple[str, ...]], str] = {
    # The SeCiCallbacks write lands (KDP does not cover it); SKCI refuses the unsigned image.
    ("A3", tuple(HVCI)): "skci.signature",
    ("A3-RWX", tuple(HVCI)): "hvci.w^x",
    ("A5", ("hardened",)): "slat",
    # KDP needs VBS only (MS Learn MmProtectDriverSection), so vbs blocks it as HVCI does.
    ("A6-KDP", ("vbs", *HVCI)): "slat",
    ("A8", tuple(CHECKED)): "securecall.mdl",
    ("A8-UNDO", tuple(CHECKED)): "securecall.mdl",
    ("A14", tuple(VBS_PRESETS)): "slat",
    ("A14-PHYS", ("hardened",)): "iommu",
    ("A14-PHYS-VTL1", ("vbs", "vbs-hvci", "legacy-2019")): "slat",
    ("A14-PHYS-VTL1", ("hardened",)): "iommu",
}


@pytest.mark.parametrize(("key", "mechanism"), DECIDING.items(), ids=lambda v: str(v))
def test_deciding_mechanism(key: tuple[str, tuple[str, ...]], mechanism: str) -> None:
    scenario_id, presets = key
    for preset in presets:
        result, _ = _run(scenario_id, preset)
        assert result.outcome == Outcome.BLOCKED
        assert result.mechanism == mechanism, (preset, result.mechanism)


# -- A3: the reasons, from the trace ---------------------------------------------------------------
def _callback_target(ctx: AttackContext) -> int:
    nt = ctx.system.nt if ctx.system else None
    assert nt is not None
    return int.from_bytes(mcd.reads_as(ctx, ctx.notes["callback_va"]) or b"", "little")


@pytest.mark.parametrize("preset", NO_HVCI)
def test_a3_the_swapped_callback_skips_ci_and_the_rootkit_runs_in_ring_0(preset: str) -> None:
    """SeCiCallbacks.CiValidateImageHeader now names ZwFlushInstructionCache: ci.dll is never
    asked about the rootkit (no DSE event for it), g_CiOptions still reads enforcing — under vbs
    KDP keeps it so — and the unsigned DriverEntry runs at VTL0 CPL0."""
    _, ctx = _run("A3", preset)
    nt = ctx.system.nt if ctx.system else None
    assert nt is not None
    assert _callback_target(ctx) == nt.space.routines[drivers.ZW_FLUSH_INSTRUCTION_CACHE]
    assert not [e for e in _events(ctx, "driver", "dse") if e.detail["driver"] == mcd.ROOTKIT]
    assert mcd.reads_as(ctx, drivers.ci_options_va(nt)) == (
        drivers.CI_OPTIONS_ENFORCING.to_bytes(8, "little")
    )
    assert runs(ctx, mcd.ROOTKIT_ENTRY) == [(0, 0)]


@pytest.mark.parametrize("preset", HVCI)
def test_a3_under_hvci_the_callback_swap_lands_but_skci_refuses_the_image(preset: str) -> None:
    """SeCiCallbacks is not KDP-protected, so the store lands (no SLAT refusal, no bugcheck);
    but under HVCI the load is SKCI's decision in VTL1, and the unsigned image gets no KX."""
    _, ctx = _run("A3", preset)
    nt = ctx.system.nt if ctx.system else None
    assert nt is not None
    assert _callback_target(ctx) == nt.space.routines[drivers.ZW_FLUSH_INSTRUCTION_CACHE]
    assert not _events(ctx, "access", "slat", "denied") and not ctx.bugchecked
    assert (
        _events(ctx, mechanism="skci.signature", outcome="refused")
        and runs(ctx, mcd.ROOTKIT_ENTRY) == []
    )


@pytest.mark.parametrize("preset", HVCI)
def test_a3_rwx_neither_the_pool_nor_a_crafted_pte_gives_kernel_execution(preset: str) -> None:
    _, ctx = _run("A3-RWX", preset)
    [wx] = _events(ctx, "hvci", "hvci.w^x", "refused")
    assert wx.vtl == 1 and wx.detail["requested"] == "RW+KX+UX"
    # The fallback: NT's own PTE says executable; SLAT says no, and NT bugchecks.
    [denied] = _events(ctx, "access", "slat", "denied")
    assert denied.detail["va"] == mcd.WINDOW_VA and denied.detail["access"] == "execute"
    assert ctx.bugchecked and runs(ctx, mcd.SHELLCODE) == []


@pytest.mark.parametrize("preset", NO_HVCI)
def test_a3_rwx_without_hvci_nt_hands_out_rwx_pool(preset: str) -> None:
    _, ctx = _run("A3-RWX", preset)
    assert ctx.notes["path"] == "pool"
    [allocated] = _events(ctx, "driver", "pool-execute", "allocated")
    assert allocated.detail["writable"] is True
    assert runs(ctx, mcd.SHELLCODE) == [(0, 0)]


# -- A5 / A6: KDP protects the GPA, HVPT the VA ----------------------------------------------------
@pytest.mark.parametrize("preset", ["vbs", "vbs-hvci"])
def test_a5_without_hvpt_the_protected_gpa_holds_but_the_va_moves(preset: str) -> None:
    """KDP protects the GPA under vbs as under vbs-hvci (it needs VBS only); neither has HVPT."""
    _, ctx = _run("A5", preset)
    assert ctx.notes["protect_status"] == "STATUS_SUCCESS"
    gpa, own = ctx.notes["variable_gpa"], ctx.notes["own_gpa"]
    assert _ram(ctx, gpa) == mcd.VICTIM_VALUE.to_bytes(8, "little")  # KDP held, physically
    assert _ram(ctx, own) == mcd.FORGED.to_bytes(8, "little")  # where the VA now leads
    assert not _events(ctx, "access", "slat", "denied")


def test_a5_with_hvpt_the_edited_pte_is_never_used() -> None:
    _, ctx = _run("A5", "hardened")
    va, gpa, own = ctx.notes["variable_va"], ctx.notes["variable_gpa"], ctx.notes["own_gpa"]
    # NT's PTE for the variable (read in RAM) names the attacker's page ...
    nt = ctx.booted.nt
    assert nt is not None
    leaf = mcd.host_lookup(ctx, nt.space.root, va)
    assert leaf is not None and leaf & PTE_ADDR_MASK == own
    [pinned] = [e for e in _events(ctx, "hvpt", "hvpt", "pinned") if e.detail["va"] == va]
    assert pinned.detail["label"] == "kdp.static"
    # ... yet the store through the variable's VA went to the protected GPA (HLAT's translation).
    [denied] = _events(ctx, "access", "slat", "denied")
    assert (denied.detail["va"], denied.detail["gpa"], denied.detail["access"]) == (
        va,
        gpa,
        "write",
    )
    assert _ram(ctx, own) == bytes(8) and _ram(ctx, gpa) == mcd.VICTIM_VALUE.to_bytes(8, "little")
    assert mcd.reads_as(ctx, va) == mcd.VICTIM_VALUE.to_bytes(8, "little")


@pytest.mark.parametrize("preset", ["vbs", *HVCI])
def test_a6_kdp_the_drivers_store_is_a_slat_refusal_on_the_protected_page(preset: str) -> None:
    _, ctx = _run("A6-KDP", preset)
    [denied] = _events(ctx, "access", "slat", "denied")
    assert denied.detail["gpa"] == ctx.notes["variable_gpa"] and denied.actor == "attacker (A0)"
    assert ctx.bugchecked


def test_a6_kdp_without_kdp_the_protection_request_fails() -> None:
    """A 2019 Secure Kernel has no KDP (STATUS_NOT_SUPPORTED); without VSM NT answers
    STATUS_INVALID_DEVICE_STATE itself, the only case MS Learn gives that status for."""
    _, ctx = _run("A6-KDP", "legacy-2019")
    assert ctx.notes["protect_status"] == "STATUS_NOT_SUPPORTED"
    assert [e.outcome for e in _events(ctx, "kdp", "kdp.policy")] == ["disabled"]
    _, ctx = _run("A6-KDP", "vbs-off")
    assert ctx.notes["protect_status"] == "STATUS_INVALID_DEVICE_STATE"


# -- A8 / A9: secure-call parameters ---------------------------------------------------------------
@pytest.mark.parametrize("preset", CHECKED)
def test_a8_both_crafted_fills_are_refused_by_the_bounds(preset: str) -> None:
    _, ctx = _run("A8", preset)
    refused = _events(ctx, "securecall", "securecall.mdl", "refused")
    assert [e.detail["reason"] for e in refused] == ["byte-count", "offset"]
    sk = ctx.booted.sk
    assert sk is not None
    gpa = mcd.hash_records_gpa(ctx)
    assert gpa is not None and _ram(ctx, gpa, len(ctx.notes["forged"])) != ctx.notes["forged"]
    capacity = int.from_bytes(_ram(ctx, gpa + 4, 4), "little")
    assert capacity == Hvci.HASH_MAX  # the records' header is as the loader wrote it
    # Under HVCI the patched page stays non-executable: its bytes match no record.
    expected = "STATUS_INVALID_IMAGE_HASH" if ctx.policy.hvci else "no-hvci"
    assert ctx.notes["follow_on"] == expected
    assert not runs(ctx, mcd.A8_SHELLCODE)


def test_a8_legacy_sk_copies_past_the_allocation() -> None:
    _, ctx = _run("A8", "legacy-2019")
    legacy = [e.outcome for e in _events(ctx, "securecall", "securecall.legacy")]
    assert legacy.count("unchecked") == 2  # legacy-2019 also refetches (its double-fetch bug)
    gpa = mcd.hash_records_gpa(ctx)
    assert gpa is not None and _ram(ctx, gpa, len(ctx.notes["forged"])) == ctx.notes["forged"]


def test_with_hvci_and_the_legacy_switch_unsigned_code_runs(
    preset_variant: Callable[..., str],
) -> None:
    """The overwrite lands on SK data HVCI decides from: the forged hash record makes
    MAKE_PROTECTED_PAGE_EXECUTABLE accept the attacker's patched page, and its code runs in VTL0
    ring 0 (HVCI on, the 2019 Secure Kernel's bug back)."""
    legacy = Legacy(unchecked_securecall_params=True, securecall_double_fetch=True)
    name = preset_variant("hardened", legacy=legacy)
    result, ctx = _run("A8", name)
    assert ctx.policy.hvci and result.outcome is Outcome.SUCCEEDED
    assert ctx.notes["follow_on"] == "ran"
    assert (0, 0) in runs(ctx, mcd.A8_SHELLCODE)  # the shellcode ran at VTL0 CPL0
    [executable] = _events(ctx, "hvci", "hvci.transition", "executable")
    assert executable.vtl == 1
    # A9's double fetch lands the same forged record there.
    result, ctx = _run("A9", name)
    assert result.outcome is Outcome.SUCCEEDED and ctx.notes["result"][2] == 1


def test_without_the_overwrite_the_same_follow_on_is_refused() -> None:
    """Control: HVCI on, switches off — the identical page patch gets no KX."""
    _, ctx = _run("A8", "hardened")
    assert ctx.notes["follow_on"] == "STATUS_INVALID_IMAGE_HASH"
    assert not runs(ctx, mcd.A8_SHELLCODE)


@pytest.mark.parametrize("preset", CHECKED)
def test_a9_the_window_is_real_but_the_sk_uses_its_capture(preset: str) -> None:
    result, ctx = _run("A9", preset)
    assert ctx.notes["result"] == [0, 0, 1]  # allocated, filled, and the hook ran in between
    order = [
        (e.mechanism, e.outcome)
        for e in _events(ctx, "securecall")
        if e.mechanism in ("securecall.capture", "securecall.mdl")
    ]
    assert order == [
        ("securecall.capture", "captured"),
        ("securecall.mdl", "validated"),
        ("securecall.mdl", "filled"),
    ]
    [filled] = _events(ctx, "securecall", "securecall.mdl", "filled")
    assert filled.detail["byte_count"] == 64
    # Capture defeats the change without refusing anything: no refusal for the verdict to name.
    assert result.mechanism == "-"


# -- A13: VTL1 ring 0 ------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", VBS_PRESETS)
def test_a13_the_secure_kernel_reads_lsaiso_and_opens_vtl0_slat(preset: str) -> None:
    _, ctx = _run("A13", preset)
    assert ctx.notes["status"] == 0
    assert ctx.notes["rights_before"] == [0]
    assert vtl0_rights(ctx, [ctx.notes["table_pfn"]]) == [R | W]
    [changed] = [
        e for e in _events(ctx, "slat", "modify-vtl-protection-mask") if e.actor == "attacker (K1)"
    ]
    assert changed.vtl == 1 and changed.detail["first_gpa"] >> PAGE_SHIFT == ctx.notes["table_pfn"]


# -- A14: DMA -------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", VBS_PRESETS)
def test_a14_driver_dma_has_vtl0_rights_only(preset: str) -> None:
    _, ctx = _run("A14", preset)
    assert ctx.notes["statuses"] == ["blocked", "done", "done", "blocked"]
    blocked = [e for e in _events(ctx, "dma") if e.outcome == "blocked"]
    assert [(e.detail["reason"], e.detail["gpa"]) for e in blocked] == [
        ("slat", ctx.notes["target_gpa"])
    ] * 2
    assert all(e.detail["mode"] == "identity" for e in blocked)  # internal NIC, no domain


def test_a14_phys_kernel_dma_protection_keeps_the_external_device_off() -> None:
    for scenario_id in ("A14-PHYS", "A14-PHYS-VTL1"):
        _, ctx = _run(scenario_id, "hardened")
        reasons = {e.detail["reason"] for e in _events(ctx, "dma") if e.outcome == "blocked"}
        assert reasons == {"kernel-dma-protection"}, scenario_id


@pytest.mark.parametrize("preset", ["vbs", "vbs-hvci", "legacy-2019"])
def test_a14_phys_external_device_reaches_vtl0_but_not_vtl1(preset: str) -> None:
    _, ctx = _run("A14-PHYS", preset)
    [allowed] = _events(ctx, "dma", outcome="allowed")
    assert allowed.detail["gpa"] == ctx.notes["variable_gpa"]
    assert allowed.detail["mode"] == "identity"
    _, ctx = _run("A14-PHYS-VTL1", preset)
    blocked = _events(ctx, "dma", outcome="blocked")
    assert [e.detail["reason"] for e in blocked] == ["slat", "slat"]
    assert not ctx.notes["read"]


# -- the verdict is the goal's: flip the mechanism, the outcome follows ------------------------
def test_a3_flip_hvci(preset_variant: Callable[..., str]) -> None:
    # HVCI is what stops it: off, the SeCiCallbacks swap works although KDP still runs ...
    result, ctx = run(mcd.A3, preset_variant("vbs-hvci", hvci=False))
    assert (
        ctx.policy.kdp
        and result.outcome == Outcome.SUCCEEDED
        and runs(ctx, mcd.ROOTKIT_ENTRY) == [(0, 0)]
    )
    # ... and on, the same steps on the vbs preset are refused by SKCI.
    result, ctx = run(mcd.A3, preset_variant("vbs", hvci=True))
    assert result.outcome == Outcome.BLOCKED and result.mechanism == "skci.signature"
    result, _ = run(mcd.A3_RWX, preset_variant("legacy-2019", hvci=True))
    assert result.outcome == Outcome.BLOCKED and result.mechanism == "hvci.w^x"


def test_a5_flip_hvpt(preset_variant: Callable[..., str]) -> None:
    result, ctx = run(mcd.A5, preset_variant("hardened", hvpt=False))
    assert result.outcome == Outcome.SUCCEEDED
    assert _ram(ctx, ctx.notes["variable_gpa"]) == mcd.VICTIM_VALUE.to_bytes(8, "little")


def test_a6_kdp_flip_kdp(preset_variant: Callable[..., str]) -> None:
    result, _ = run(mcd.A6_KDP, preset_variant("vbs-hvci", kdp=False))
    assert result.outcome == Outcome.SUCCEEDED
    result, _ = run(mcd.A6_KDP, preset_variant("vbs", kdp=False))
    assert result.outcome == Outcome.SUCCEEDED
    result, _ = run(mcd.A6_KDP, preset_variant("legacy-2019", kdp=True))
    assert result.outcome == Outcome.BLOCKED and result.mechanism == "slat"


def test_a8_flip_the_legacy_switch(preset_variant: Callable[..., str]) -> None:
    legacy = Legacy(unchecked_securecall_params=True)
    result, _ = run(mcd.A8, preset_variant("vbs", legacy=legacy))
    assert result.outcome == Outcome.SUCCEEDED


def test_a8_undo_the_fixed_sk_refuses_the_short_transfer_mdl() -> None:
    """CVE-2020-0917's check: ByteCount must cover the undo table; nothing reaches SK memory."""
    for preset in CHECKED:
        _, ctx = _run("A8-UNDO", preset)
        [refused] = _events(ctx, "securecall", "securecall.mdl", "refused")
        assert refused.detail["reason"] == "byte-count"
        assert not _events(ctx, "securecall", "hotpatch.undo")
        assert _ram(ctx, ctx.notes["target_gpa"], len(ctx.notes["secret"])) == ctx.notes["secret"]


def test_a8_undo_flip_the_legacy_switch(preset_variant: Callable[..., str]) -> None:
    """Build B with the unfixed Secure Kernel: the copy takes the PFN after ByteCount's span from
    the attacker's bytes and overwrites the SK key page (the out-of-bounds write)."""
    legacy = Legacy(unchecked_securecall_params=True)
    result, ctx = run(mcd.A8_UNDO, preset_variant("vbs", legacy=legacy))
    assert result.outcome == Outcome.SUCCEEDED
    [copied] = _events(ctx, "securecall", "hotpatch.undo", "copied")
    assert copied.detail["checked_pages"] == 1
    assert copied.detail["pfns"][1] == ctx.notes["target_gpa"] >> PAGE_SHIFT


def test_a8_names_the_cve_services_and_the_class_example_as_such() -> None:
    """Issue 11 item 12: CVE-2020-0917 is SkmmObtainHotPatchUndoTable (re-enacted by A8-UNDO),
    CVE-2020-0918 SkmmUnmapMdl, LIVEDUMP_ADD_BUFFER the chain's write; the FILL_SECURE_ALLOCATION
    scenario is labelled an example of the class."""
    assert "example" in mcd.A8.title.lower() and "SkmmObtainHotPatchUndoTable" in mcd.A8.source
    assert "SkmmUnmapMdl" in mcd.A8.source and "LIVEDUMP_ADD_BUFFER" in mcd.A8.source
    assert "SkmmObtainHotPatchUndoTable" in mcd.A8_UNDO.source
    assert not mcd.A8_UNDO.applicable(PRESETS["legacy-2019"])  # table A has no number for it


def test_a9_flip_the_legacy_switch(preset_variant: Callable[..., str]) -> None:
    legacy = Legacy(securecall_double_fetch=True)
    result, ctx = run(mcd.A9, preset_variant("vbs", legacy=legacy))
    assert result.outcome == Outcome.SUCCEEDED
    [refetched] = _events(ctx, "securecall", "securecall.legacy", "refetched")
    assert refetched.detail["byte_count"] == PAGE_SIZE + mcd.FORGED_LENGTH


def test_a13_flip_the_capability() -> None:
    """The same payload from VTL0 ring 0 gets neither the secret nor a SLAT change."""

    def steps(ctx: AttackContext) -> None:
        sk = ctx.booted.sk
        assert sk is not None
        table_gpa = mcd.lsaiso_table_gpa(ctx)
        assert table_gpa is not None
        ctx.notes["secret"] = nt_owf(DEFAULT_LOGON.password)
        ctx.notes["table_pfn"] = table_gpa >> PAGE_SHIFT
        ctx.notes["rights_before"] = vtl0_rights(ctx, [table_gpa >> PAGE_SHIFT])
        _, loot_gpa = ctx.kernel_page()
        ctx.notes["loot_gpa"] = loot_gpa
        in_va, in_gpa = ctx.kernel_page()
        out_va, out_gpa = ctx.kernel_page()
        ctx.kernel(mcd.own_vtl0_and_lsaiso, table_gpa, loot_gpa, (in_va, in_gpa, out_va, out_gpa))

    k0 = replace(mcd.A13, id="A13-from-K0", capability=Capability.K0, steps=steps)
    result, ctx = run(k0, "vbs")
    assert result.outcome == Outcome.BLOCKED and result.mechanism == "slat"
    assert ctx.bugchecked


def _open_key_page_then_dma(ctx: AttackContext) -> None:
    """K1 first grants VTL0 read/write on the SK key page; then A14's driver DMA runs as is."""
    sk = ctx.booted.sk
    assert sk is not None
    gpa, _ = mcd.sk_key_page(ctx)

    def grant(vp: VirtualProcessor) -> int:
        return hvcall.modify_vtl_protection_mask(vp, sk.params, [gpa >> PAGE_SHIFT], R | W).status

    assert ctx.secure_kernel(grant) == 0
    mcd.a14_steps(ctx)


def test_a14_flip_slat_and_kernel_dma_protection(preset_variant: Callable[..., str]) -> None:
    # DMA follows VTL0's SLAT: once VTL1 opens the page to VTL0, the same driver DMA reads it.
    result, ctx = run(replace(mcd.A14, steps=_open_key_page_then_dma), "hardened")
    assert result.outcome == Outcome.SUCCEEDED
    assert ctx.notes["statuses"] == ["done"] * 4
    # Kernel DMA Protection off: the external device reaches VTL0 memory, never VTL1's.
    name = preset_variant("hardened", kernel_dma_protection=False)
    result, _ = run(mcd.A14_PHYS, name)
    assert result.outcome == Outcome.SUCCEEDED
    result, _ = run(mcd.A14_PHYS_VTL1, name)
    assert result.outcome == Outcome.BLOCKED and result.mechanism == "slat"
