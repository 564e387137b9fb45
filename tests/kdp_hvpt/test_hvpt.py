"""HVPT / HLAT (vbs-internals §5.6, §6 A5): PTE remapping against KDP and NT code."""

from __future__ import annotations

from typing import Any

import pytest

from vbsim.guest import hvcall
from vbsim.guest.address_space import CODE_BASE, DIRECT_MAP
from vbsim.hv.defs import HvStatus
from vbsim.hw import code, hlat
from vbsim.hw.faults import Bugcheck
from vbsim.hw.slat import R
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Pte
from vbsim.nt import kdp
from vbsim.ntstatus import NtStatus
from vbsim.sk import hvpt

from .kit import VALUE, booted, events, kernel_page, parts, remap, sk_of, space_of

RWNX = int(Pte.RW | Pte.NX | Pte.G)
FORGED = 0xA77A_C4E5


def _protected(name: str) -> tuple[Any, Any, Any, Any, Any]:
    system = booted(name)
    machine, nt, vp = parts(system)
    section = kdp.load_data_section(nt, vp.cpu, "drv.config", 1, VALUE.to_bytes(8, "little"))
    assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va) == NtStatus.SUCCESS
    return system, machine, nt, vp, section


def test_a5_remap_defeats_kdp_without_hvpt() -> None:
    """HVCI+KDP protect the GPA, not the VA: the attacker points the VA at its own page."""
    system, machine, nt, vp, section = _protected("vbs-hvci")
    _forged_va, forged_pfn = kernel_page(nt, vp, FORGED.to_bytes(8, "little"))
    remap(nt, vp, section.va, forged_pfn << PAGE_SHIFT, RWNX)
    assert vp.read_u64(section.va) == FORGED  # every reader of the variable sees attacker data
    vp.write_u64(section.va, 0x5555)  # and writes land without a fault
    assert machine.ram.read_u64(forged_pfn << PAGE_SHIFT) == 0x5555
    assert machine.ram.read_u64(section.gpa) == VALUE  # the protected GPA itself held
    assert not events(system, "intercept", "slat")


def test_a5_remap_changes_nothing_with_hvpt() -> None:
    system, machine, nt, vp, section = _protected("hardened")
    sk = sk_of(system)
    assert hvpt.host_pinned(space_of(sk).ram, sk, section.va) == section.gpa >> PAGE_SHIFT
    _forged_va, forged_pfn = kernel_page(nt, vp, FORGED.to_bytes(8, "little"))
    old = remap(nt, vp, section.va, forged_pfn << PAGE_SHIFT, RWNX)
    assert old & ~0xFFF & ((1 << 52) - 1) == section.gpa  # the PTE really was edited
    assert vp.read_u64(section.va) == VALUE
    reads = [e for e in events(system, "access", "hvpt") if e.detail.get("va") == section.va]
    assert reads and reads[-1].detail["gpa"] == section.gpa
    with pytest.raises(Bugcheck):
        vp.write_u64(section.va, 0x5555)
    assert machine.ram.read_u64(section.gpa) == VALUE
    assert machine.ram.read_u64(forged_pfn << PAGE_SHIFT) == FORGED
    pinned = [e for e in events(system, "hvpt", "hvpt") if e.outcome == "pinned"]
    assert pinned[-1].detail["label"] == "kdp.static"


def test_unprotected_addresses_still_follow_nt_tables_with_hvpt() -> None:
    """HVPT protects registered ranges only; everything else restarts with CR3 (SDM)."""
    system = booted("hardened")
    _machine, nt, vp = parts(system)
    section = kdp.load_data_section(nt, vp.cpu, "drv.plain", 1, VALUE.to_bytes(8, "little"))
    _forged_va, forged_pfn = kernel_page(nt, vp, FORGED.to_bytes(8, "little"))
    remap(nt, vp, section.va, forged_pfn << PAGE_SHIFT, RWNX)
    assert vp.read_u64(section.va) == FORGED


def test_hlat_tables_are_sk_memory_vtl0_can_only_read() -> None:
    system = booted("hardened")
    machine, _nt, vp = parts(system)
    sk = sk_of(system)
    st = hvpt.state(sk)
    assert st is not None and machine.slat is not None
    for pfn in st.table_pfns:
        assert machine.slat.rights(0, pfn) == R and pfn in sk.host_own_pages(space_of(sk).ram)
    root = DIRECT_MAP + st.root
    entry = vp.read_u64(root + 8 * 0x1F0)  # readable (the processor's walk needs that)
    with pytest.raises(Bugcheck):
        vp.write_u64(root + 8 * 0x1F0, entry ^ hlat.RESTART)
    assert machine.ram.read_u64(st.root + 8 * 0x1F0) == entry


def test_vtl0_cannot_program_or_read_hlat() -> None:
    system = booted("hardened")
    _machine, nt, vp = parts(system)
    in_va, in_pfn = kernel_page(nt, vp)
    out_va, out_pfn = kernel_page(nt, vp)
    pages = hvcall.ParamPages(in_va, in_pfn << PAGE_SHIFT, out_va, out_pfn << PAGE_SHIFT)
    reg = hlat.HV_REGISTER_MODEL_HLAT_CONTROL
    result = hvcall.set_vp_registers(vp, pages, [(reg, 0)], target_vtl=0)
    assert result.status == HvStatus.ACCESS_DENIED
    result, _ = hvcall.get_vp_registers(vp, pages, [reg], target_vtl=0)
    assert result.status == HvStatus.ACCESS_DENIED
    assert vp.layers[0] is not None and vp.layers[0].hlat is not None


def _as_sk(system: Any) -> tuple[Any, Any]:
    _machine, _nt, vp = parts(system)
    return vp, sk_of(system)


def test_hlat_register_validation() -> None:
    system = booted("hardened")
    vp, sk = _as_sk(system)
    reg = hlat.HV_REGISTER_MODEL_HLAT_CONTROL
    vp.switch_vtl(1)  # the SK's own view (a debugger stands in for SK code here)
    try:
        current = hvcall.get_vp_registers(vp, sk.params, [reg], target_vtl=0)[1][0]
        assert current & hlat.CONTROL_ENABLE
        for bad in (
            current | (1 << 63),  # reserved
            current | (2 << hlat.CONTROL_PREFIX_SHIFT),  # prefix 3: above the maximum
            hlat.CONTROL_ENABLE | (space_of(sk).ram.size + PAGE_SIZE),  # root outside RAM
        ):
            result = hvcall.set_vp_registers(vp, sk.params, [(reg, bad)], target_vtl=0)
            assert result.status == HvStatus.INVALID_REGISTER_VALUE, hex(bad)
        # VTL1 may not give itself HLAT (only a higher VTL programs a lower one).
        result = hvcall.set_vp_registers(vp, sk.params, [(reg, current)], target_vtl=1)
        assert result.status == HvStatus.ACCESS_DENIED
    finally:
        vp.switch_vtl(0)


def test_hlat_survives_an_ap_start_and_covers_every_vp() -> None:
    system = booted("hardened")
    machine, _nt, _vp = parts(system)
    sk = sk_of(system)
    st = hvpt.state(sk)
    assert st is not None
    for target in machine.vps:
        assert target.started
        layer = target.layers[0]
        assert layer is not None and layer.hlat is not None and layer.hlat.root == st.root


@pytest.mark.parametrize("name", ["vbs", "vbs-hvci", "legacy-2019"])
def test_no_hvpt_without_the_policy(name: str) -> None:
    system = booted(name)
    machine, _nt, _vp = parts(system)
    assert hvpt.state(sk_of(system)) is None
    assert all(v.layers[0] is not None and v.layers[0].hlat is None for v in machine.vps)


# -- code remapping (A5's other half) -------------------------------------------------------------
_RAN: list[str] = []


@code.guest_code("test.attacker-payload")
def _payload(vp: Any, *args: Any) -> str:
    _RAN.append("payload")
    return "payload"


def _remap_code(name: str) -> tuple[Any, Any, int]:
    system = booted(name)
    _machine, nt, vp = parts(system)
    target = nt.space.routines["nt.KiInvalidOpcode"]
    page = target & ~(PAGE_SIZE - 1)
    fake = bytearray(PAGE_SIZE)
    slot = target - page
    fake[slot : slot + code.THUNK_SIZE] = code.encode_thunk("test.attacker-payload")
    _, pfn = kernel_page(nt, vp, bytes(fake))
    remap(nt, vp, page, pfn << PAGE_SHIFT, int(Pte.G))
    return system, vp, target


def test_a5_code_remap_runs_attacker_code_without_hvci_or_hvpt() -> None:
    _RAN.clear()
    _system, vp, target = _remap_code("vbs")
    assert vp.call(target) == "payload" and _RAN == ["payload"]


def test_a5_code_remap_is_ignored_with_hvpt() -> None:
    _RAN.clear()
    system, vp, target = _remap_code("hardened")
    assert hvpt.host_pinned(space_of(sk_of(system)).ram, sk_of(system), target) is not None
    assert vp.fetch(target) is not _payload
    assert target >= CODE_BASE and not _RAN


# -- issue 11 item 8: HVPT through hvdef's surface -------------------------------------------------
def test_hvpt_is_enabled_through_the_hvdef_surface() -> None:
    """The loader enabled VTL1 with enable_hardware_hvpt, and every VP's VTL0 secure config holds
    hardware_hvpt_enabled (set by VTL1), alongside MBEC's bit; HLAT is on for each."""
    from vbsim.hv import defs

    system = booted("hardened")
    machine, _nt, _vp = parts(system)
    hv = machine.hv
    assert hv is not None and hv.partition.hvpt_vtls == 1 << 1
    for vp in machine.vps:
        config = hv.states[vp.index][1].secure_config.get(0, 0)
        assert defs.SECCFG_HW_HVPT_ENABLED.extract(config), vp.index
        assert defs.SECCFG_MBEC_ENABLED.extract(config), vp.index
        layer = vp.layers[0]
        assert layer is not None and layer.hlat is not None, vp.index
    assert not [e for e in events(system, "hvpt", "hvpt") if e.outcome == "reload-failed"]


def test_without_the_hardware_hvpt_capability_there_is_no_hvpt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HvRegisterVsmCapabilities without hardware_hvpt_available: the loader does not ask for it,
    the SK runs no HVPT, and A5's remap works under hardened as under vbs-hvci."""
    from vbsim.hv.hypervisor import Hypervisor

    original = Hypervisor.__init__

    def without_hvpt(self: Hypervisor, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.hvpt_available = False

    monkeypatch.setattr(Hypervisor, "__init__", without_hvpt)
    system = booted("hardened")
    machine, nt, vp = parts(system)
    assert machine.hv is not None and machine.hv.partition.hvpt_vtls == 0
    assert [e.outcome for e in events(system, "hvpt", "hvpt")] == ["unavailable"]
    section = kdp.load_data_section(nt, vp.cpu, "drv.config", 1, VALUE.to_bytes(8, "little"))
    assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va) == NtStatus.SUCCESS
    _forged_va, forged_pfn = kernel_page(nt, vp, FORGED.to_bytes(8, "little"))
    remap(nt, vp, section.va, forged_pfn << PAGE_SHIFT, RWNX)
    assert vp.read_u64(section.va) == FORGED


def test_clearing_hardware_hvpt_enabled_turns_hlat_off() -> None:
    """The hvdef bit is the switch: VTL1 clearing it on a VP drops that VP's HLAT translation."""
    system, _machine, nt, vp, section = _protected("hardened")
    sk = sk_of(system)
    from vbsim.hv.defs import HvRegisterName

    name = int(HvRegisterName.VSM_VP_SECURE_CONFIG_VTL0)
    previous = vp.vtl
    vp.switch_vtl(1)
    try:
        result = hvcall.set_vp_registers(vp.cpu, sk.params, [(name, 0)])
    finally:
        vp.switch_vtl(previous)
    assert result.ok
    layer = vp.layers[0]
    assert layer is not None and layer.hlat is None
    _forged_va, forged_pfn = kernel_page(nt, vp, FORGED.to_bytes(8, "little"))
    remap(nt, vp, section.va, forged_pfn << PAGE_SHIFT, RWNX)
    assert vp.read_u64(section.va) == FORGED  # NT's edited tables decide again
