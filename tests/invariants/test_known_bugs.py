"""Model bugs the invariants work found, each fixed and kept here as a regression test.

1. ``hypercall-page-overlay`` — ``vbsim.hv.msrs.access`` (HV_X64_MSR_HYPERCALL) writes the
   hypercall stubs with ``hv.ram.write`` into whatever page VTL0 names, with no SLAT check: a K0
   attacker rewrites Secure Kernel memory through the hypervisor (invariant 6).
2. ``foreign-context-routine`` — SK guest routines find their kernel with
   ``assert isinstance(vp.p.gs_object, SecureKernel)`` (``vbsim.sk.kernel._sk``, and
   ``sk.ium.syscalls._system_service``): a VTL0 user writes ``encode_thunk("sk.entry")`` into an
   RWX page of its own (UX is granted to user pages even under HVCI) and calls it — the
   AssertionError escapes the model.
3. NT's trap handlers run from a user page bugcheck the machine: ``nt.KiPageFault`` (and the
   other handlers) decide "kernel-mode fault" from ``vp.interrupted_cpl``, which is the CPL of the
   last *delivered* exception, not how the routine was reached; executed by a plain ``call`` at
   CPL3 they raise ``Bugcheck`` — a U0 denial of service no real processor allows.
4. ``kdp-page-theft`` — ``vbsim.sk.ium.process.request_pages`` (behind trustlet creation, secure
   storage and IUM's NtAllocateVirtualMemory) accepts every page ``sk.vtl0_page`` calls VTL0's:
   NT (the K0 attacker answers the SK's normal call) offers a page KDP made read-only for good,
   the SK takes it from VTL0 and clears it (``process.build``) — KDP-protected data destroyed
   through the SK (invariant 8).  The same holds for HVCI-validated code pages (NT's own code
   cleared: a denial of service).  Fix: also refuse ``kdp.is_protected`` pages and pages whose
   HVCI state is not UNVALIDATED.
5. A closed machine is never freed: ``vbsim.nt.kernel._KERNELS`` is a ``WeakKeyDictionary`` whose
   value (the NT kernel) refers to its key (the RAM), and the hypervisor's suspended VTL contexts
   (greenlets whose frames refer to the machine) cannot be collected.  ``Machine.close()`` should
   drop both.

Fixes: (1) the stubs are written only where the VTL's own SLAT grants write; (2, 3) kernel code
run without its kernel's GS or at CPL3 takes #GP (``VirtualProcessor.wrong_context``); (4)
``hvci.ordinary_page`` refuses KDP and HVCI-owned pages, and a failed CREATE_PROCESS gives the
image section back; (5) ``Machine.close()`` unwinds the VTL contexts and the kernel is a plain
attribute of the RAM it is loaded in.
"""

from __future__ import annotations

import contextlib
import gc
import weakref

import pytest

from vbsim.boot.chain import boot
from vbsim.hv.defs import HvMsr
from vbsim.hw.faults import GuestTermination
from vbsim.invariants import InvariantViolation
from vbsim.invariants.attacker import Action, Program, Session
from vbsim.invariants.known_bugs import KNOWN_BUGS, known_bug, strip_known_bugs
from vbsim.policy import preset
from vbsim.trace import Trace

from .kit import attached


def test_vtl0_cannot_make_the_hypervisor_write_sk_memory() -> None:
    rig = attached("hardened")
    try:
        target = rig.monitor.pages.static[-1]
        with rig.monitor.step("VTL0 moves its hypercall page onto an SK page"):
            rig.vp.wrmsr(int(HvMsr.HYPERCALL), (target << 12) | 1)
    finally:
        rig.close()


def test_nt_cannot_hand_the_sk_a_kdp_page() -> None:
    from vbsim.hw import code
    from vbsim.hw.cpu import Cpu
    from vbsim.invariants.attacker import trustlet_image
    from vbsim.nt import kdp, secure_process, vsl
    from vbsim.ntstatus import NtStatus
    from vbsim.sk.ium.process import NORMAL_ALLOCATE_PAGES

    rig = attached("hardened")
    nt, vp = rig.nt, rig.vp
    try:
        with rig.monitor.step("protect a driver data page"):
            section = kdp.load_data_section(nt, vp.cpu, "victim.data", 1, b"PROTECTED" * 10)
            assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va) == 0
        victim = section.pfns[0]
        assert nt.vsl is not None and rig.system.nt_space is not None
        slot = nt.vsl.normal_call_slot(NORMAL_ALLOCATE_PAGES)
        honest = vp.cpu.read_u64(slot)

        def hostile(cpu: Cpu, block: int) -> int:
            """NT's routine answers, then the first page it gives is the KDP-protected one."""
            cpu.call(honest, block)
            fields = vsl.request_fields(cpu, block)
            if fields[0] == NtStatus.SUCCESS:
                fields[1] = victim
                vsl.write_answer(cpu, block, fields)
            return fields[0]

        # NT's normal-call table points at the hostile routine (planted in NT's code pages, as
        # a debugger plants code): a kernel write of one slot.
        name = "test.known-bugs.hostile-allocate"
        code.register(name, hostile, breakpoint=True)
        vp.cpu.write_u64(slot, rig.system.nt_space.install(name))
        with rig.monitor.step("start vmsp with that page offered"):
            secure_process.create_secure_process(
                nt, vp.cpu, "vmsp.exe", 2, 0, None, trustlet_image("vmsp")
            )
        assert (0, 0) in rig.system.trace.ran(name)  # the offer was made, by NT's dispatch
    finally:
        rig.close()


@pytest.mark.parametrize("routine", ["sk.entry", "sk.KiSystemServiceStart"])
def test_sk_code_bytes_run_from_vtl0_user_mode_end_in_a_guest_event(routine: str) -> None:
    session = Session("vbs-hvci")
    try:
        with contextlib.suppress(GuestTermination):
            session.run(Program("U0", (Action("exec", (routine, 0)),)))
    finally:
        session.close()


@pytest.mark.parametrize("routine", ["nt.KiPageFault", "nt.KiUnexpectedTrap"])
def test_user_mode_cannot_bugcheck_the_machine(routine: str) -> None:
    session = Session("hardened")
    try:
        result = session.run(Program("U0", (Action("exec", (routine, 0)),)))
        assert result.terminated is None, result.terminated
    finally:
        session.close()


def test_a_closed_machine_is_freed() -> None:
    system = boot(preset("vbs"), trace=Trace())
    assert system.machine is not None
    ref = weakref.ref(system.machine)
    system.machine.close()
    del system
    gc.collect()
    assert ref() is None


def test_release_frees_it() -> None:
    from vbsim.invariants.teardown import release

    system = boot(preset("vbs"), trace=Trace())
    assert system.machine is not None
    ref = weakref.ref(system.machine)
    release(system.machine)
    del system
    gc.collect()
    assert ref() is None


def test_known_bug_actions_are_stripped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    from vbsim.invariants import known_bugs

    assert KNOWN_BUGS == ()  # every bug found so far is fixed
    dropped = known_bugs.KnownBug(
        "exec-sk-entry", "synthetic", lambda _c, a: a.op == "exec", InvariantViolation
    )
    defused = known_bugs.KnownBug(
        "hostile-pages",
        "synthetic",
        lambda c, a: c == "K0" and a.op == "trustlet" and bool(a.args[4]),
        InvariantViolation,
        lambda a: Action(a.op, (*a.args[:4], ())),
    )
    monkeypatch.setattr(known_bugs, "KNOWN_BUGS", (dropped, defused))
    program = Program(
        "U0",
        (
            Action("syscall", ("NtTestAlert", (0, 0, 0, 0))),
            Action("exec", ("sk.entry", 0)),
        ),
    )
    stripped, removed = strip_known_bugs(program)
    assert [a.op for a in stripped.actions] == ["syscall"]
    assert removed == ["exec-sk-entry"]
    assert known_bug(program) is dropped
    assert known_bug(stripped) is None
    hostile = Program("K0", (Action("trustlet", ("vmsp", (), -1, 0, (1, 2))),))
    rewritten, removed = strip_known_bugs(hostile)
    assert rewritten.actions == (Action("trustlet", ("vmsp", (), -1, 0, ())),)
    assert removed == ["hostile-pages"]
