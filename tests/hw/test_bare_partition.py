"""SLAT isolation and VTL register state through a booted bare partition (VTL0 kernel + VTL1
monitor on a hypervisor): VTL1 takes rights away, VTL0 touches the page, the hypervisor raises a
secure intercept to VTL1, VTL1 injects #GP, and no secret byte reaches VTL0."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vbsim.guest.address_space import DIRECT_MAP
from vbsim.guest.bare import (
    MON_NULL,
    MON_OK,
    MON_PROTECT,
    BareKernel,
    ExceptionRecord,
    Monitor,
    boot_bare,
    monitor_call,
)
from vbsim.hv.defs import HvMessageType
from vbsim.hw import code
from vbsim.hw.faults import GuestTermination, ThreadTerminated
from vbsim.hw.regs import PRIVATE_REGS, SHARED_GPRS
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SIZE, Access, Msr, Pte, Vector
from vbsim.machine import Machine
from vbsim.trace import Event

GPA_INTERCEPT = int(HvMessageType.GPA_INTERCEPT)
SECRET = b"TOP-SECRET-KEY!!" * (PAGE_SIZE // 16)
SECRET_WINDOWS = {SECRET[i : i + 4] for i in range(16)}
EXEC_VA = 0xFFFF_F800_0100_0000
PROBE = "test.hw.bare_probe"


@code.guest_code(PROBE)
def _probe(vp: VirtualProcessor) -> str:
    _RAN.append(vp.vtl)
    return "probe ran"


_RAN: list[int] = []


class Partition:
    def __init__(self) -> None:
        self.machine = Machine(ram_size=64 << 20)
        kernel, monitor, failures = boot_bare(self.machine)
        assert failures == []
        self.kernel: BareKernel = kernel
        self.monitor: Monitor = monitor
        self.vp = self.machine.bsp
        self.trace = self.machine.trace

    def secret_page(self) -> tuple[int, int]:
        va, gpa = self.kernel.space.alloc_data()
        self.machine.ram.write(gpa, SECRET)
        return va, gpa

    def protect(self, gpa: int, flags: int) -> None:
        assert monitor_call(self.vp, MON_PROTECT, gpa, flags) == MON_OK
        assert self.vp.vtl == 0

    def events(self, kind: str) -> list[Event]:
        return [e for e in self.trace.events if e.kind == kind]


@pytest.fixture
def part() -> Iterator[Partition]:
    p = Partition()
    yield p
    p.machine.close()


def _vtl0_visible_values(vp: VirtualProcessor) -> list[bytes]:
    """Every register value VTL0 can read after the flow, as bytes."""
    values = [getattr(vp, name).to_bytes(8, "little") for name in SHARED_GPRS]
    values += [x.to_bytes(16, "little") for x in vp.xmm]
    values += [vp.cr2.to_bytes(8, "little")]
    bank = vp.banks[0]
    assert bank is not None
    values += [(getattr(bank, name) & (2**64 - 1)).to_bytes(8, "little") for name in PRIVATE_REGS]
    return values


def _assert_no_secret(values: list[bytes]) -> None:
    for value in values:
        for window in SECRET_WINDOWS:
            assert window not in value


def test_boot_leaves_vp_in_vtl0_ring0_with_vtl1_enabled(part: Partition) -> None:
    vp = part.vp
    assert (vp.vtl, vp.cpl) == (0, 0)
    assert vp.vtl_enabled(0) and vp.vtl_enabled(1)
    assert part.monitor.initialized
    assert vp.banks[0] is not vp.banks[1]


@pytest.mark.parametrize("reader", ["read", "read_u64", "read_u32"])
def test_vtl0_read_of_a_page_vtl1_made_unreadable(part: Partition, reader: str) -> None:
    vp = part.vp
    va, gpa = part.secret_page()
    assert vp.read(va, 16) == SECRET[:16]  # readable before; also warms the TLB fast path
    part.protect(gpa, 0)
    part.trace.record()
    vp.cr2 = 0
    with pytest.raises(ThreadTerminated) as exc:
        getattr(vp, reader)(va + 0x10, *((64,) if reader == "read" else ()))
    assert exc.value.vector == int(Vector.GP)
    assert vp.vtl == 0
    assert part.kernel.exceptions == [ExceptionRecord(0, 0, int(Vector.GP), 0, 0)]
    # The message VTL1 received names the GPA, the GVA and the access type (READ = 0).
    assert part.monitor.log(vp) == [(GPA_INTERCEPT, int(Access.READ), 0, gpa + 0x10, va + 0x10, 0)]
    intercepts = part.events("intercept")
    assert [(e.mechanism, e.outcome, e.vtl) for e in intercepts] == [
        ("secure-intercept", "posted", 0)
    ]
    assert intercepts[0].detail["gpa"] == gpa + 0x10
    assert intercepts[0].detail["to_vtl"] == 1
    assert intercepts[0].detail["message_type"] == GPA_INTERCEPT
    assert intercepts[0].detail["what"] == f"read of GPA 0x{gpa + 0x10:x}"
    denied = [e for e in part.events("access") if e.outcome == "denied"]
    assert [(e.mechanism, e.vtl, e.detail["access"], e.detail["gpa"]) for e in denied] == [
        ("slat", 0, "read", gpa + 0x10)
    ]
    injected = part.events("event")
    assert [(e.mechanism, e.detail["vector"], e.vtl) for e in injected] == [
        ("pending-event", int(Vector.GP), 0)
    ]
    _assert_no_secret(_vtl0_visible_values(vp))
    assert part.machine.ram.read(gpa, PAGE_SIZE) == SECRET


def test_vtl0_user_mode_read_is_also_intercepted(part: Partition) -> None:
    vp = part.vp
    _, gpa = part.secret_page()
    user_va = 0x0000_0000_7000_0000
    part.kernel.space.pt.map(user_va, gpa, int(Pte.US | Pte.RW))
    part.protect(gpa, 0)
    vp.set_cpl(3)
    with pytest.raises(ThreadTerminated):
        vp.read(user_va, 8)
    assert part.monitor.log(vp) == [(GPA_INTERCEPT, int(Access.READ), 0, gpa, user_va, 0)]
    assert [e.vector for e in part.kernel.exceptions] == [int(Vector.GP)]
    _assert_no_secret(_vtl0_visible_values(vp))


@pytest.mark.parametrize("flags", [0, 1])  # no access / read-only
def test_vtl0_write_to_a_protected_page_changes_nothing(part: Partition, flags: int) -> None:
    vp = part.vp
    va, gpa = part.secret_page()
    vp.write(va, SECRET[:8])  # writable before; caches a dirty translation
    part.protect(gpa, flags)
    part.trace.record()
    with pytest.raises(ThreadTerminated) as exc:
        vp.write(va + 0x20, b"OVERWRITTEN!")
    assert exc.value.vector == int(Vector.GP)
    with pytest.raises(ThreadTerminated):
        vp.write_u64(va + 0x40, 0x4141_4141_4141_4141)
    assert part.machine.ram.read(gpa, PAGE_SIZE) == SECRET
    assert part.monitor.log(vp) == [
        (GPA_INTERCEPT, int(Access.WRITE), 0, gpa + 0x20, va + 0x20, 0),
        (GPA_INTERCEPT, int(Access.WRITE), 0, gpa + 0x40, va + 0x40, 0),
    ]
    assert [i.detail["what"] for i in part.events("intercept")] == [
        f"write of GPA 0x{gpa + 0x20:x}",
        f"write of GPA 0x{gpa + 0x40:x}",
    ]
    assert [e.vector for e in part.kernel.exceptions] == [13, 13]
    _assert_no_secret(_vtl0_visible_values(vp))
    if flags == 1:  # read-only: reading still works, and gives the unchanged secret
        assert vp.read(va, 16) == SECRET[:16]


def test_vtl0_execute_of_a_page_without_kx_never_runs_the_routine(part: Partition) -> None:
    vp = part.vp
    pfn = part.machine.ram.frames.alloc("exec-test")
    gpa = pfn * PAGE_SIZE
    part.kernel.space.pt.map(EXEC_VA, gpa, int(Pte.G))  # supervisor, read-only, executable
    part.machine.ram.write(gpa + 0x40, code.encode_thunk(PROBE))
    _RAN.clear()
    assert vp.call(EXEC_VA + 0x40) == "probe ran"
    assert _RAN == [0]
    part.protect(gpa, 1)  # R only: no KX, no UX
    part.trace.record()
    with pytest.raises(ThreadTerminated) as exc:
        vp.call(EXEC_VA + 0x40)
    assert exc.value.vector == int(Vector.GP)
    assert _RAN == [0]  # the routine did not run again
    assert part.monitor.log(vp) == [
        (GPA_INTERCEPT, int(Access.EXECUTE), 0, gpa + 0x40, EXEC_VA + 0x40, 0)
    ]
    assert part.events("intercept")[0].detail["what"] == f"execute of GPA 0x{gpa + 0x40:x}"
    # R still holds: the thunk bytes can be read, just not executed.
    assert vp.read(EXEC_VA + 0x40, code.THUNK_SIZE) == code.encode_thunk(PROBE)


def test_monitor_frames_are_out_of_vtl0_reach(part: Partition) -> None:
    vp = part.vp
    for gpa in (part.monitor.log_gpa, part.monitor.space.pt.root):
        with pytest.raises(ThreadTerminated):
            vp.read_u64(part.kernel.space.phys_va(gpa))
    log = part.monitor.log(vp)
    assert [(r[0], r[1], r[3]) for r in log] == [
        (GPA_INTERCEPT, int(Access.READ), part.monitor.log_gpa),
        (GPA_INTERCEPT, int(Access.READ), part.monitor.space.pt.root),
    ]


def test_private_registers_are_per_vtl_and_shared_ones_cross_a_vtl_call(part: Partition) -> None:
    vp = part.vp
    bank0, bank1 = vp.banks[0], vp.banks[1]
    assert bank0 is not None and bank1 is not None
    assert bank0.cr3 == part.kernel.space.pt.root
    assert bank1.cr3 == part.monitor.space.pt.root
    assert bank0.cr3 != bank1.cr3
    vp.wrmsr(Msr.LSTAR, 0xFFFF_F800_0BAD_0000)
    bank0.rsp = 0xFFFF_F880_00AA_0000
    bank1.rsp = 0xFFFF_F880_00BB_0000  # VTL1's own stack (as its context would set it)
    vtl0_rip = bank0.rip
    vp.rbx, vp.r12, vp.r15 = 0xB0B0, 0x1212_1212, 0xF15F_15F1
    vp.xmm[3] = 0x3333_4444_5555_6666_7777_8888_9999_AAAA
    seen: list[dict[str, Any]] = []

    def listener(event: Event) -> None:
        if event.vtl == 1 and not seen:
            p = vp.p
            seen.append(
                {
                    "bank": p,
                    "rip": p.rip,
                    "rsp": p.rsp,
                    "cr3": p.cr3,
                    "lstar": p.lstar,
                    "shared": (vp.rbx, vp.r12, vp.r15, vp.xmm[3], vp.rsi, vp.rdx),
                }
            )

    part.trace.listen(listener)
    status = monitor_call(vp, MON_NULL, 0x5151, 0xD0D0)
    part.trace.unlisten(listener)
    assert status == MON_OK
    (inside,) = seen
    # In VTL1: its own private bank ...
    assert inside["bank"] is bank1
    assert inside["rip"] == part.monitor.entry_va
    assert inside["rsp"] == 0xFFFF_F880_00BB_0000
    assert inside["cr3"] == part.monitor.space.pt.root
    assert inside["lstar"] != 0xFFFF_F800_0BAD_0000
    # ... and VTL0's shared registers.
    assert inside["shared"] == (
        0xB0B0,
        0x1212_1212,
        0xF15F_15F1,
        0x3333_4444_5555_6666_7777_8888_9999_AAAA,
        0x5151,
        0xD0D0,
    )
    # Back in VTL0: private state is VTL0's again; shared registers carry what VTL1 left.
    assert vp.vtl == 0 and vp.p is bank0
    assert (bank0.rsp, bank0.lstar, bank0.cr3) == (
        0xFFFF_F880_00AA_0000,
        0xFFFF_F800_0BAD_0000,
        part.kernel.space.pt.root,
    )
    assert bank0.rip == vtl0_rip + 3  # past the 3-byte vmcall of the VTL-call stub
    assert vp.rdmsr(Msr.LSTAR) == 0xFFFF_F800_0BAD_0000
    assert bank1.rsp == 0xFFFF_F880_00BB_0000
    assert (vp.rbx, vp.r12, vp.r15) == (0xB0B0, 0x1212_1212, 0xF15F_15F1)
    assert vp.xmm[3] == 0x3333_4444_5555_6666_7777_8888_9999_AAAA
    # The monitor's writes to RDI/RSI/RDX/R8 are visible to VTL0.
    assert (vp.rdi, vp.rsi, vp.rdx, vp.r8) == (0, 0, 0, MON_OK)


def test_vmcall_from_vtl0_ring3_is_ud(part: Partition) -> None:
    vp = part.vp
    vp.set_cpl(3)
    with pytest.raises(ThreadTerminated) as exc:
        monitor_call(vp, MON_NULL)
    assert exc.value.vector == int(Vector.UD)
    assert part.kernel.exceptions[-1].vector == int(Vector.UD)
    assert vp.vtl == 0


# -- random VTL0 behaviour against the monitor ---------------------------------------------------
@st.composite
def vtl0_ops(draw: st.DrawFn, monitor_frames: list[int]) -> tuple[str, int, int, int]:
    kind = draw(st.sampled_from(["read", "write", "read_u64", "write_u64", "call"]))
    where = draw(st.sampled_from(["monitor", "monitor", "gpa", "va"]))
    if where == "monitor":
        va = DIRECT_MAP + draw(st.sampled_from(monitor_frames)) * PAGE_SIZE
        va += draw(st.integers(0, PAGE_SIZE - 1))
    elif where == "gpa":
        va = DIRECT_MAP + draw(st.integers(0, (64 << 20) + PAGE_SIZE))
    else:
        va = draw(st.integers(0, 2**64 - 1))
    return kind, va, draw(st.integers(0, 2 * PAGE_SIZE)), draw(st.sampled_from([0, 0, 3]))


def _monitor_frames() -> list[int]:
    p = Partition()
    frames = sorted(set(p.monitor.space.frames))
    p.machine.close()
    return frames


MONITOR_FRAMES = _monitor_frames()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(vtl0_ops(MONITOR_FRAMES), min_size=1, max_size=8))
def test_random_vtl0_accesses_never_escape_or_touch_vtl1(
    program: list[tuple[str, int, int, int]],
) -> None:
    part = Partition()
    vp = part.vp
    assert sorted(set(part.monitor.space.frames)) == MONITOR_FRAMES  # deterministic boot
    ram = part.machine.ram
    code_before = {f: ram.read(f * PAGE_SIZE, PAGE_SIZE) for f in part.monitor.space.code_pages}
    for kind, va, length, cpl in program:
        vp.set_cpl(cpl)
        try:
            if kind == "read":
                data = vp.read(va, length)
                assert len(data) == length
            elif kind == "write":
                vp.write(va, b"\xcc" * min(length, 64))
            elif kind == "read_u64":
                vp.read_u64(va)
            elif kind == "write_u64":
                vp.write_u64(va, 0xCCCC_CCCC_CCCC_CCCC)
            else:
                vp.call(va)
        except GuestTermination:
            pass
        assert vp.vtl == 0  # every flow ends back in VTL0
    assert {f: ram.read(f * PAGE_SIZE, PAGE_SIZE) for f in code_before} == code_before
    log = part.monitor.log(vp)
    event(f"intercepts: {min(len(log), 3)}+")
    for record in log:
        assert record[0] == GPA_INTERCEPT and record[2] == 0
        assert record[3] // PAGE_SIZE in MONITOR_FRAMES
    part.machine.close()
