"""FILL_SECURE_ALLOCATION works from its captured MDL as SK memory holds it after its normal call
(issue 10 part 1): the SK validates the copy it captured into a VTL1 page, lets NT run (the
GET_PHYSICAL_PAGES normal call), then copies what that page says.  VTL0 cannot reach the page
(SLAT), so the A9 double fetch stays closed; a VTL1 writer racing the normal call can, as it
could reach a real SK's capture buffer.  Here the race is a debugger's write during the normal
call, standing in for the other processor."""

from __future__ import annotations

from typing import Any

from vbsim.attacks.context import AttackContext
from vbsim.boot.disk import Disk
from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.nt import kdp as ntkdp
from vbsim.nt.layouts import HostKernelView
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset
from vbsim.sk.services import allocation
from vbsim.sk.services.allocation import MDL_BYTECOUNT_OFFSET, NORMAL_GET_PHYSICAL_PAGES

PAGE = 4096
#: What the racing writer does during the normal call: (capture page GPA, new ByteCount).
RACE: dict[str, Any] = {}


@guest_code("tests.sk.capture_racer")
def _racer(cpu: Cpu, block: int) -> Any:
    """NT's GET_PHYSICAL_PAGES handler, hooked: the race's write lands in the SK's capture page
    while NT serves the call, then NT's own routine answers."""
    if "gpa" in RACE:
        RACE["ram"].write(RACE["gpa"] + MDL_BYTECOUNT_OFFSET, RACE["count"].to_bytes(4, "little"))
    return cpu.call(RACE["original"], block)


def _fill(race: bool, vtl0_write: bool = False) -> int:
    """K0 fills a secure allocation with a 64-byte MDL while the normal call is hooked; the
    byte count the SK reported copying."""
    policy = preset("vbs")
    ctx = AttackContext(policy, "vbs", Disk.install(policy))
    system = ctx.boot()
    nt, sk, machine = system.nt, system.sk, system.machine
    assert nt is not None and sk is not None and machine is not None and nt.vsl is not None
    assert system.nt_space is not None
    hook = system.nt_space.install("tests.sk.capture_racer")
    capture_va = allocation.state(sk).capture[0]
    RACE.clear()
    RACE.update(ram=machine.ram, count=128)
    if race:  # the capture page's frame, through the SK's page tables (a debugger's walk)
        found = HostKernelView(machine.ram, sk.space.root).translate(capture_va)
        assert found is not None
        RACE["gpa"] = found[0] & 0x000F_FFFF_FFFF_F000

    def k0(cpu: Cpu) -> int:
        assert nt.vsl is not None
        status, handle = ntkdp.create_secure_allocation(nt, cpu, PAGE)
        assert status == NtStatus.SUCCESS
        pfns = ntkdp.stage_buffer(nt, cpu, b"A" * PAGE)
        mdl_va, mdl_pfn = ntkdp.build_mdl(nt, cpu, pfns, 64)
        slot = nt.vsl.normal_call_slot(NORMAL_GET_PHYSICAL_PAGES)
        RACE["original"] = cpu.read_u64(slot)
        if vtl0_write:  # the A9 race instead: the VTL0 MDL, which the SK no longer reads
            RACE["gpa"] = (mdl_pfn << 12) + (mdl_va & 0xFFF)
        cpu.write_u64(slot, hook)
        try:
            return ntkdp.fill_secure_allocation_raw(nt, cpu, handle, 0, mdl_va, mdl_pfn)
        finally:
            cpu.write_u64(slot, RACE["original"])

    assert ctx.kernel(k0) == NtStatus.SUCCESS
    [filled] = [
        e for e in system.trace.find("securecall", "securecall.mdl") if e.outcome == "filled"
    ]
    count: int = filled.detail["byte_count"]
    return count


def test_without_a_race_the_sk_copies_what_it_validated() -> None:
    assert _fill(race=False) == 64


def test_a_vtl0_write_during_the_normal_call_changes_nothing() -> None:
    assert _fill(race=False, vtl0_write=True) == 64


def test_a_vtl1_write_to_the_capture_during_the_normal_call_is_what_the_sk_uses() -> None:
    assert _fill(race=True) == 128
