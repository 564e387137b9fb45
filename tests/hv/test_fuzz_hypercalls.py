"""Random hypercalls from VTL0 (and VTL1): architectural results only, VTL1 memory untouched."""

from __future__ import annotations

import contextlib
import hashlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import as_vtl, make_bare

from vbsim.guest import hvcall
from vbsim.hv.defs import HvCallCode, HvStatus
from vbsim.hw.faults import GuestTermination

ENV = make_bare()
KNOWN = [int(c) for c in HvCallCode]


def vtl1_digest() -> str:
    ram = ENV.machine.ram
    h = hashlib.sha256()
    for pfn in sorted(set(ENV.monitor.space.frames)):
        if pfn == ENV.monitor.log_gpa >> 12 or pfn == ENV.monitor.sim_gpa >> 12:
            continue  # the monitor itself writes these when it handles intercepts
        if pfn in (ENV.monitor.params.in_gpa >> 12, ENV.monitor.params.out_gpa >> 12):
            continue
        if pfn == ENV.monitor.assist_gpa >> 12:
            continue  # the hypervisor writes the entry reason there on every entry to VTL1
        h.update(ram.read(pfn << 12, 4096))
    return h.hexdigest()


def _warm_up() -> None:
    """Run the monitor's intercept path once before the baseline: as it first runs, the CPU sets
    Accessed/Dirty bits in VTL1's own page tables (VTL1 changing its own memory, not VTL0)."""
    control = hvcall.input_value(HvCallCode.GET_VP_REGISTERS, rep_count=1)
    with contextlib.suppress(GuestTermination):
        hvcall.raw_hypercall(ENV.vp, control, ENV.monitor.params.in_gpa, ENV.kernel.params.out_gpa)


_warm_up()
BASELINE = vtl1_digest()

controls = st.one_of(
    st.integers(0, (1 << 64) - 1),
    st.builds(
        lambda code, fast, rep, start, var: code | fast << 16 | var << 17 | rep << 32 | start << 48,
        st.sampled_from(KNOWN),
        st.integers(0, 1),
        st.integers(0, 8),
        st.integers(0, 8),
        st.integers(0, 3),
    ),
)
gpas = st.one_of(
    st.integers(0, (1 << 64) - 1),
    st.sampled_from(
        [
            ENV.kernel.params.in_gpa,
            ENV.kernel.params.out_gpa,
            ENV.monitor.params.in_gpa,
            ENV.monitor.assist_gpa,
            0,
            8,
            4088,
        ]
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    control=controls,
    rdx=gpas,
    r8=gpas,
    block=st.binary(min_size=0, max_size=256),
    xmm=st.lists(st.integers(0, (1 << 128) - 1), min_size=6, max_size=6),
)
def test_random_hypercalls_from_vtl0(
    control: int, rdx: int, r8: int, block: bytes, xmm: list[int]
) -> None:
    vp = ENV.vp
    assert vp.vtl == 0
    vp.write(ENV.kernel.params.in_va, block)
    vp.xmm[:6] = xmm
    vp.rcx, vp.rdx, vp.r8 = control, rdx, r8
    vp.rax = 0xFFFF  # not a status: must be overwritten unless the flow ended in an exception
    ended = False
    try:
        vp.vmcall()
    except GuestTermination:
        # #UD for VtlCall/VtlReturn misuse, or the #GP the monitor injects for a parameter page
        # in VTL1 memory (a memory intercept, TLFS "Alignment Requirements"): no status.
        ended = True
    if vp.vtl != 0:  # a VTL call may leave us wherever VTL1 returned: always VTL0
        raise AssertionError("VP left in VTL1")
    status = vp.rax & 0xFFFF
    assert ended or status in HvStatus._value2member_map_ or control & 0xFFFF in (0x11, 0x12)
    assert vtl1_digest() == BASELINE
    assert ENV.machine.slat is not None
    for pfn in ENV.monitor.space.frames:
        assert ENV.machine.slat.rights(0, pfn) == 0  # VTL0 never regained access


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(control=controls, rdx=gpas, r8=gpas, block=st.binary(min_size=0, max_size=256))
def test_random_hypercalls_from_vtl1_never_escape(
    control: int, rdx: int, r8: int, block: bytes
) -> None:
    env = ENV
    with as_vtl(env.vp, 1) as vp:
        vp.write(env.monitor.params.in_va, block)
        vp.rcx, vp.rdx, vp.r8 = control, rdx, r8
        if control & 0xFFFF == HvCallCode.VTL_RETURN:
            vp.rcx = 0  # VtlReturn from the harness would leave VTL1: not what this test drives
        with contextlib.suppress(GuestTermination):
            vp.vmcall()
