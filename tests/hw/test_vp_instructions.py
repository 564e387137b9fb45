"""The VP's instructions: syscall/sysret, vmcall, wrmsr/rdmsr, mov cr, lidt, port I/O, fetch."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest

from vbsim.guest.address_space import interrupt_gate
from vbsim.hw import code
from vbsim.hw.bus import Bus
from vbsim.hw.faults import GuestHang, GuestTermination
from vbsim.hw.regs import LONG_MODE_CR0, LONG_MODE_CR4, LONG_MODE_EFER
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Cr0, Cr4, Efer, Msr, Pte, Rflags, Vector

from .rig import TEST_VA, FaultRecord, Rig

SYSCALL_ENTRY = "test.hw.syscall_entry"
NO_SYSRET_ENTRY = "test.hw.syscall_no_sysret"
ROUTINE = "test.hw.routine"
UD, GP, PF = int(Vector.UD), int(Vector.GP), int(Vector.PF)
RW, US, NX = int(Pte.RW), int(Pte.US), int(Pte.NX)


@code.guest_code(SYSCALL_ENTRY)
def _syscall_entry(vp: VirtualProcessor) -> None:
    rig = vp.kernel()
    assert isinstance(rig, Rig)
    rig.notes.append(
        {
            "cpl": vp.cpl,
            "rip": vp.rip,
            "rcx": vp.rcx,
            "r11": vp.r11,
            "rflags": vp.rflags,
            "rax": vp.rax,
        }
    )
    vp.rax = 0xC0FFEE  # the system call's result
    vp.sysret()


@code.guest_code(NO_SYSRET_ENTRY)
def _syscall_no_sysret(vp: VirtualProcessor) -> None:
    return None


@code.guest_code(ROUTINE)
def _routine(vp: VirtualProcessor, *args: int) -> tuple[int, ...]:
    # It may run at CPL3, where GS designates no kernel: the harness finds its rig directly.
    rig = Rig.current
    assert rig is not None
    rig.notes.append(("ran", vp.rip, vp.cpl, args))
    return args


def _gp(rig: Rig) -> FaultRecord:
    return FaultRecord(GP, 0, rig.vp.cr2, 0, 0)


# -- syscall / sysret ----------------------------------------------------------------------
USER_RIP = 0x0000_0000_0040_1000
SFMASK = int(Rflags.IF | Rflags.DF | Rflags.TF | Rflags.AC)
USER_FLAGS = int(Rflags.FIXED1 | Rflags.IF | Rflags.DF | Rflags.AC | Rflags.CF)


def _user_rig(entry: str = SYSCALL_ENTRY) -> Rig:
    rig = Rig()
    vp = rig.vp
    vp.wrmsr(Msr.LSTAR, rig.install(entry))
    vp.wrmsr(Msr.SFMASK, SFMASK)
    vp.set_cpl(3)
    vp.p.rip = USER_RIP
    vp.p.rflags = USER_FLAGS
    return rig


def test_syscall_enters_lstar_at_cpl0_and_sysret_returns_to_cpl3() -> None:
    rig = _user_rig()
    vp = rig.vp
    lstar = vp.p.lstar
    vp.rax = 0x55
    vp.syscall()
    assert rig.notes == [
        {
            "cpl": 0,
            "rip": lstar,
            "rcx": USER_RIP,  # RCX <- RIP
            "r11": USER_FLAGS,  # R11 <- RFLAGS
            "rflags": USER_FLAGS & ~SFMASK,  # RFLAGS &= ~SFMASK
            "rax": 0x55,
        }
    ]
    assert int(Rflags.FIXED1 | Rflags.CF) == USER_FLAGS & ~SFMASK
    assert (vp.cpl, vp.p.rip, vp.p.rflags, vp.rax) == (3, USER_RIP, USER_FLAGS, 0xC0FFEE)
    assert rig.faults == []


def test_sysret_clears_rf_and_forces_bit_1() -> None:
    rig = _user_rig()
    vp = rig.vp
    vp.set_cpl(0)
    vp.rcx = USER_RIP + 0x10
    vp.r11 = 0x1_0200  # RF | IF, bit 1 clear
    vp.sysret()
    assert (vp.cpl, vp.p.rip, vp.p.rflags) == (3, USER_RIP + 0x10, 0x202)


def test_syscall_with_sce_clear_is_ud() -> None:
    rig = _user_rig()
    vp = rig.vp
    vp.p.efer &= ~int(Efer.SCE)
    assert rig.expect_fault(vp.syscall) == FaultRecord(UD, 0, 0, 0, 0)
    assert rig.notes == []


def test_syscall_from_cpl0_is_refused() -> None:
    rig = _user_rig()
    rig.vp.set_cpl(0)
    assert rig.expect_fault(rig.vp.syscall).vector == UD
    assert rig.notes == []


def test_sysret_from_cpl3_is_gp() -> None:
    rig = _user_rig()
    assert rig.expect_fault(rig.vp.sysret) == FaultRecord(GP, 0, 0, 0, 0)


def test_syscall_entry_that_never_sysrets_hangs_the_thread() -> None:
    rig = _user_rig(NO_SYSRET_ENTRY)
    with pytest.raises(GuestHang):
        rig.vp.syscall()


def test_syscall_to_a_user_page_is_stopped_by_smep() -> None:
    rig = _user_rig()
    user_entry = TEST_VA
    rig.page(user_entry, US, code.encode_thunk(SYSCALL_ENTRY))
    rig.vp.p.lstar = user_entry
    assert rig.expect_fault(rig.vp.syscall) == FaultRecord(PF, 0x11, user_entry, 0, 0)
    assert rig.notes == []


def test_syscall_to_garbage_is_ud() -> None:
    rig = _user_rig()
    rig.page(0xFFFF_F900_0000_0000, 0, b"\x90" * 64)
    rig.vp.p.lstar = 0xFFFF_F900_0000_0000
    assert rig.expect_fault(rig.vp.syscall).vector == UD


# -- vmcall -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cpl", [3, 0])
def test_vmcall_is_ud_from_cpl3_and_on_bare_metal(cpl: int) -> None:
    rig = Rig()
    rig.vp.set_cpl(cpl)
    rig.vp.rcx = 0x11
    assert rig.expect_fault(rig.vp.vmcall) == FaultRecord(UD, 0, 0, 0, 0)


# -- MSRs -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("msr", "field"),
    [
        (Msr.LSTAR, "lstar"),
        (Msr.STAR, "star"),
        (Msr.CSTAR, "cstar"),
        (Msr.SFMASK, "sfmask"),
        (Msr.KERNEL_GS_BASE, "kernel_gs_base"),
        (Msr.GS_BASE, "gs_base"),
        (Msr.FS_BASE, "fs_base"),
        (Msr.TSC_AUX, "tsc_aux"),
        (Msr.PAT, "pat"),
        (Msr.SYSENTER_EIP, "sysenter_eip"),
    ],
)
def test_wrmsr_rdmsr_round_trip(msr: int, field: str) -> None:
    rig = Rig()
    value = 0xFFFF_F800_1234_5000
    rig.vp.wrmsr(msr, value)
    assert getattr(rig.vp.p, field) == value
    assert rig.vp.rdmsr(msr) == value
    assert rig.faults == []


def test_wrmsr_truncates_to_64_bits() -> None:
    rig = Rig()
    rig.vp.wrmsr(Msr.STAR, (1 << 64) | 7)
    assert rig.vp.rdmsr(Msr.STAR) == 7


def test_rdmsr_efer_reports_the_bank() -> None:
    rig = Rig()
    assert rig.vp.rdmsr(Msr.EFER) == LONG_MODE_EFER


@pytest.mark.parametrize("op", ["rd", "wr"])
@pytest.mark.parametrize("msr", [Msr.LSTAR, Msr.EFER, 0x4000_0000])
def test_msr_access_from_cpl3_is_gp(op: str, msr: int) -> None:
    rig = Rig()
    rig.vp.set_cpl(3)
    before = rig.vp.p.lstar
    if op == "rd":
        assert rig.expect_fault(lambda: rig.vp.rdmsr(msr)) == _gp(rig)
    else:
        assert rig.expect_fault(lambda: rig.vp.wrmsr(msr, 0x1234)) == _gp(rig)
    assert rig.vp.p.lstar == before


@pytest.mark.parametrize("msr", [0x1234, 0xC000_0085, 0x0, 0xFFFF_FFFF])
def test_unknown_msr_is_gp(msr: int) -> None:
    rig = Rig()
    assert rig.expect_fault(lambda: rig.vp.rdmsr(msr)) == _gp(rig)
    assert rig.expect_fault(lambda: rig.vp.wrmsr(msr, 1)) == _gp(rig)


@pytest.mark.parametrize("msr", [0x4000_0000, 0x4000_0001, 0x4000_0FFF])
def test_synthetic_msr_without_hypervisor_is_gp(msr: int) -> None:
    rig = Rig()
    assert rig.expect_fault(lambda: rig.vp.rdmsr(msr)) == _gp(rig)
    assert rig.expect_fault(lambda: rig.vp.wrmsr(msr, 1)) == _gp(rig)


@pytest.mark.parametrize("bit", [1, 2, 9, 12, 15, 63])
def test_efer_reserved_bits_are_gp(bit: int) -> None:
    rig = Rig()
    assert rig.expect_fault(lambda: rig.vp.wrmsr(Msr.EFER, LONG_MODE_EFER | 1 << bit)) == _gp(rig)
    assert rig.vp.p.efer == LONG_MODE_EFER


def test_efer_writable_bits_are_accepted() -> None:
    rig = Rig()
    value = int(Efer.LME | Efer.LMA)
    rig.vp.wrmsr(Msr.EFER, value)
    assert rig.vp.p.efer == value
    assert rig.faults == []


# -- control registers ------------------------------------------------------------------------
@pytest.mark.parametrize("cr", [0, 3, 4, 8])
def test_mov_to_cr_from_cpl3_is_gp(cr: int) -> None:
    rig = Rig()
    rig.vp.set_cpl(3)
    before = (rig.vp.p.cr0, rig.vp.p.cr3, rig.vp.p.cr4, rig.vp.p.cr8)
    assert rig.expect_fault(lambda: rig.vp.mov_to_cr(cr, 0)) == _gp(rig)
    assert (rig.vp.p.cr0, rig.vp.p.cr3, rig.vp.p.cr4, rig.vp.p.cr8) == before


@pytest.mark.parametrize("bit", [15, 19, 25, 31, 32, 63])
def test_cr4_reserved_bits_are_gp(bit: int) -> None:
    rig = Rig()
    before = rig.vp.p.cr4
    assert rig.expect_fault(lambda: rig.vp.mov_to_cr(4, before | 1 << bit)) == _gp(rig)
    assert rig.vp.p.cr4 == before


def test_cr4_defined_bits_are_accepted() -> None:
    rig = Rig()
    value = LONG_MODE_CR4 | int(Cr4.SMEP | Cr4.SMAP | Cr4.FSGSBASE | Cr4.OSXSAVE | Cr4.PKE)
    rig.vp.mov_to_cr(4, value)
    assert rig.vp.p.cr4 == value and rig.faults == []


def test_cr0_write_and_cr8_write() -> None:
    rig = Rig()
    rig.vp.mov_to_cr(0, LONG_MODE_CR0 & ~int(Cr0.WP))
    assert rig.vp.p.cr0 == LONG_MODE_CR0 & ~int(Cr0.WP)
    rig.vp.mov_to_cr(8, 0xF)
    assert rig.vp.p.cr8 == 0xF
    assert rig.faults == []


def test_cr3_write_keeps_bit_63_out_of_cr3() -> None:
    rig = Rig()
    root = rig.vp.p.cr3
    rig.vp.mov_to_cr(3, root | 1 << 63)
    assert rig.vp.p.cr3 == root


@pytest.mark.parametrize("cr", [1, 5, 9, 15])
def test_mov_to_undefined_cr_faults(cr: int) -> None:
    rig = Rig()
    assert rig.expect_fault(lambda: rig.vp.mov_to_cr(cr, 0)).vector in (UD, GP)


@pytest.mark.parametrize(
    ("cr", "value"),
    [
        pytest.param(0, LONG_MODE_CR0 | 1 << 32, id="cr0-bit32"),
        pytest.param(0, LONG_MODE_CR0 & ~int(Cr0.PG), id="cr0-clear-pg"),
        pytest.param(0, (LONG_MODE_CR0 | int(Cr0.NW)) & ~int(Cr0.CD), id="cr0-nw-without-cd"),
        pytest.param(4, LONG_MODE_CR4 & ~int(Cr4.PAE), id="cr4-clear-pae"),
        pytest.param(3, 1 << 50, id="cr3-bit50"),
        pytest.param(8, 0x10, id="cr8-bit4"),
    ],
)
def test_mov_to_cr_invalid_values_are_gp(cr: int, value: int) -> None:
    rig = Rig()
    p = rig.vp.p
    before = (p.cr0, p.cr3, p.cr4, p.cr8)
    if cr == 3:
        value |= p.cr3
    rig.expect_fault(lambda: rig.vp.mov_to_cr(cr, value))
    assert rig.faults[-1] == _gp(rig)
    assert (p.cr0, p.cr3, p.cr4, p.cr8) == before


def test_mov_to_cr2_sets_the_shared_cr2() -> None:
    rig = Rig()
    rig.vp.mov_to_cr(2, 0xFFFF_F880_1234_5678)
    assert rig.faults == []
    assert rig.vp.cr2 == 0xFFFF_F880_1234_5678


@pytest.mark.parametrize(
    "msr",
    [Msr.LSTAR, Msr.KERNEL_GS_BASE, Msr.FS_BASE, Msr.GS_BASE, Msr.SYSENTER_EIP],
    ids=lambda m: m.name,
)
def test_wrmsr_non_canonical_address_is_gp(msr: Msr) -> None:
    rig = Rig()
    before = rig.vp.rdmsr(msr)
    rig.expect_fault(lambda: rig.vp.wrmsr(msr, 0x0000_8000_0000_0000))
    assert rig.vp.rdmsr(msr) == before


def test_sysret_to_non_canonical_rcx_is_gp_at_cpl0() -> None:
    rig = Rig()
    rig.vp.rcx = 0x0000_8000_0000_0000
    rig.vp.r11 = 0x202
    rig.expect_fault(rig.vp.sysret)
    assert rig.faults[-1] == FaultRecord(GP, 0, 0, 0, 0)


# -- lidt / lgdt, port I/O ------------------------------------------------------------------
def test_lidt_lgdt_load_base_and_16_bit_limit() -> None:
    rig = Rig()
    rig.vp.lgdt(0xFFFF_F880_0001_0000, 0x1_007F)
    assert (rig.vp.p.gdtr_base, rig.vp.p.gdtr_limit) == (0xFFFF_F880_0001_0000, 0x7F)
    rig.vp.lidt(0xFFFF_F880_0000_0000, 0xFFF)
    assert (rig.vp.p.idtr_base, rig.vp.p.idtr_limit) == (0xFFFF_F880_0000_0000, 0xFFF)


@pytest.mark.parametrize("op", ["lidt", "lgdt"])
def test_descriptor_table_loads_need_cpl0(op: str) -> None:
    rig = Rig()
    rig.vp.set_cpl(3)
    before = (rig.vp.p.idtr_base, rig.vp.p.idtr_limit, rig.vp.p.gdtr_base)
    assert rig.expect_fault(lambda: getattr(rig.vp, op)(0x1000, 0xFF)) == _gp(rig)
    assert (rig.vp.p.idtr_base, rig.vp.p.idtr_limit, rig.vp.p.gdtr_base) == before


class _Port:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def port_read(self, port: int, size: int) -> int:
        return 0xAB

    def port_write(self, port: int, size: int, value: int) -> None:
        self.writes.append((port, size, value))


def test_port_io_reaches_the_bus_and_unclaimed_ports_float() -> None:
    rig = Rig()
    device = _Port()
    rig.vp.bus = Bus()
    rig.vp.bus.claim_ports(0x3F8, 8, device, "uart")
    rig.vp.out(0x3F8, 1, 0x1_41)
    assert device.writes == [(0x3F8, 1, 0x41)]
    assert rig.vp.inp(0x3F9, 1) == 0xAB
    assert rig.vp.inp(0x80, 2) == 0xFFFF
    rig.vp.out(0x80, 4, 1)  # unclaimed: dropped
    rig.vp.set_cpl(3)
    assert rig.expect_fault(lambda: rig.vp.inp(0x3F8, 1)) == _gp(rig)
    rig.vp.set_cpl(3)  # the terminated thread left the VP in its kernel
    assert rig.expect_fault(lambda: rig.vp.out(0x3F8, 1, 0)) == _gp(rig)
    assert device.writes == [(0x3F8, 1, 0x41)]


# -- instruction fetch -----------------------------------------------------------------------
def test_call_runs_the_routine_with_rip_at_its_address_and_restores_rip() -> None:
    rig = Rig()
    va = rig.install(ROUTINE)
    rig.vp.p.rip = 0x1111
    assert rig.vp.call(va, 1, 2) == (1, 2)
    assert rig.notes == [("ran", va, 0, (1, 2))]
    assert rig.vp.p.rip == 0x1111


@pytest.mark.parametrize(
    "content",
    [
        bytes(32),
        b"\x90" * 32,
        code.THUNK_MAGIC + bytes(32 - len(code.THUNK_MAGIC)),  # magic, unknown digest
        code.encode_thunk(ROUTINE)[:-1] + b"\x00",  # one byte off
    ],
    ids=["zeros", "nops", "unknown-digest", "corrupt"],
)
def test_fetch_of_bytes_that_are_not_a_thunk_is_ud(content: bytes) -> None:
    rig = Rig()
    rig.page(TEST_VA, 0, content)
    rig.vp.cr2 = 0x77
    assert rig.expect_fault(lambda: rig.vp.call(TEST_VA)) == FaultRecord(UD, 0, 0x77, 0, 0)
    assert rig.notes == []


def test_thunk_at_an_unaligned_address_inside_one_page_runs() -> None:
    rig = Rig()
    gpa = rig.page(TEST_VA, 0)
    rig.ram.write(gpa + 0x105, code.encode_thunk(ROUTINE))
    assert rig.vp.call(TEST_VA + 0x105, 9) == (9,)


def test_fetch_beyond_ram_is_ud() -> None:
    rig = Rig()
    rig.pt.map(TEST_VA, rig.ram.size, 0)
    assert rig.expect_fault(lambda: rig.vp.call(TEST_VA)).vector == UD


def test_fetch_ending_exactly_at_the_end_of_ram_runs() -> None:
    rig = Rig()
    last = rig.ram.size - PAGE_SIZE
    rig.pt.map(TEST_VA, last, 0)
    rig.ram.write(rig.ram.size - code.THUNK_SIZE, code.encode_thunk(ROUTINE))
    assert rig.vp.call(TEST_VA + PAGE_SIZE - code.THUNK_SIZE) == ()


def test_user_code_runs_at_cpl3() -> None:
    rig = Rig()
    rig.page(TEST_VA, US, code.encode_thunk(ROUTINE))
    rig.vp.set_cpl(3)
    assert rig.vp.call(TEST_VA) == ()
    assert rig.notes == [("ran", TEST_VA, 3, ())]


def test_thunk_straddling_into_an_nx_page_faults_on_the_second_page() -> None:
    rig = Rig()
    base = rig.ram.frames.alloc_contiguous(2, "straddle") << PAGE_SHIFT
    rig.pt.map(TEST_VA, base, 0)
    rig.pt.map(TEST_VA + PAGE_SIZE, base + PAGE_SIZE, NX)
    rig.ram.write(base + PAGE_SIZE - 16, code.encode_thunk(ROUTINE))
    record = rig.expect_fault(lambda: rig.vp.call(TEST_VA + PAGE_SIZE - 16))
    assert record == FaultRecord(PF, 0x11, TEST_VA + PAGE_SIZE, 0, 0)
    assert rig.notes == []


def test_thunk_straddling_two_mapped_pages_uses_both_translations() -> None:
    rig = Rig()
    first = rig.page(TEST_VA, 0)
    rig.frame()  # the physically next frame holds zeros
    second = rig.page(TEST_VA + PAGE_SIZE, 0)
    thunk = code.encode_thunk(ROUTINE)
    rig.ram.write(first + PAGE_SIZE - 16, thunk[:16])
    rig.ram.write(second, thunk[16:])
    assert rig.vp.call(TEST_VA + PAGE_SIZE - 16, 5) == (5,)


def test_faulting_straddling_u64_store_writes_nothing() -> None:
    rig = Rig()
    first = rig.page(TEST_VA, RW)
    rig.page(TEST_VA + PAGE_SIZE, 0)  # read-only second page
    rig.expect_fault(lambda: rig.vp.write_u64(TEST_VA + PAGE_SIZE - 4, 0x1122_3344_5566_7788))
    assert rig.faults[-1] == FaultRecord(PF, 3, TEST_VA + PAGE_SIZE, 0, 0)
    assert rig.ram.read(first + PAGE_SIZE - 4, 4) == bytes(4)


# -- routines entered through another control transfer ---------------------------------------
NOP1 = "test.hw.one_arg_nop"


@code.guest_code(NOP1)
def _one_arg_nop(vp: VirtualProcessor) -> None:
    return None


def _enter_handler_by_call(rig: Rig) -> None:
    rig.vp.call(rig.handler_va)  # an IDT handler (vp, vector, error_code) entered by CALL


def _enter_handler_by_syscall(rig: Rig) -> None:
    rig.vp.wrmsr(Msr.LSTAR, rig.handler_va)  # a ring-0 attacker points LSTAR at it
    rig.vp.set_cpl(3)
    rig.vp.syscall()


def _enter_plain_routine_by_idt(rig: Rig) -> None:
    rig.ram.write(rig.idt_gpa + 14 * 16, interrupt_gate(rig.install(NOP1)))
    rig.vp.read(TEST_VA, 1)  # #PF delivered to a routine that takes no (vector, error)


@pytest.mark.parametrize(
    "enter",
    [_enter_handler_by_call, _enter_handler_by_syscall, _enter_plain_routine_by_idt],
    ids=["call-to-idt-handler", "syscall-to-idt-handler", "idt-gate-to-plain-routine"],
)
def test_routine_entered_with_another_signature_is_a_guest_event(
    enter: Callable[[Rig], None],
) -> None:
    rig = Rig()
    # Any guest event (#UD, #GP, a killed thread ...) is acceptable; a TypeError is not.
    with contextlib.suppress(GuestTermination):
        enter(rig)
