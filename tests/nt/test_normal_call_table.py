"""NT's normal-call dispatch table (VslpNormalCallTable) is data in NT's .data, read at each call.

The Secure Kernel's normal calls (vbs-internals §2.5) are answered by the routine whose VA the
table's slot holds in RAM when the call arrives: the loader links NT's handlers there, a K0 write
of one slot redirects the next call, and an empty slot is STATUS_NOT_IMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vbsim.attacks.catalogue.a03_a14_memory_code_dma import place_rwx
from vbsim.boot.chain import System
from vbsim.hw import code
from vbsim.hw.cpu import Cpu
from vbsim.hw.faults import Bugcheck
from vbsim.hw.x86 import PAGE_SIZE
from vbsim.nt import kdp, vsl
from vbsim.nt.kernel import NtKernel
from vbsim.nt.layouts import NORMAL_ALLOCATE_PAGES, NORMAL_GET_PHYSICAL_PAGES, NORMAL_IUM_SYSCALL
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset
from vbsim.sk import callargs
from vbsim.sk.callargs import SecureCallArgs

#: The linked handlers: number → routine name (NT's symbols).
LINKED = {
    NORMAL_ALLOCATE_PAGES: "nt.VslpAllocatePhysicalPages",
    NORMAL_IUM_SYSCALL: "nt.VslpDispatchIumSyscall",
    NORMAL_GET_PHYSICAL_PAGES: "nt.VslpGetPhysicalPages",
}
#: The test's normal-call routine (a breakpoint on it records each execution).
HOOK = "test.nt.normal-call-hook"
#: An unused kernel VA for the hook's page when NT gives no executable pool.
WINDOW_VA = 0xFFFF_F8A3_0000_0000


def _cpu(system: System) -> Cpu:
    assert system.machine is not None
    return system.machine.bsp.cpu


def _stubs(system: System) -> vsl.Vsl:
    assert system.nt is not None and system.nt.vsl is not None
    return system.nt.vsl


def _fill(system: System) -> int:
    """NT fills a fresh secure allocation (FILL_SECURE_ALLOCATION): the SK makes its "get
    physical pages" normal call between validating the MDL and copying."""
    nt, cpu = system.nt, _cpu(system)
    assert nt is not None
    status, handle = kdp.create_secure_allocation(nt, cpu, PAGE_SIZE)
    assert status == NtStatus.SUCCESS
    return kdp.fill_secure_allocation(nt, cpu, handle, 0, b"\x5a" * 64)


def _dispatched(system: System, since: int) -> list[tuple[str, int, int]]:
    return [
        (e.outcome, e.detail["number"], e.detail["routine"])
        for e in system.trace.events[since:]
        if e.kind == "normalcall" and e.mechanism == "nt-dispatch"
    ]


def test_the_table_is_in_ram_at_the_variables_gpa(make_system: Callable[..., System]) -> None:
    """The loader linked each handler: RAM at the variable's GPA holds the VA of a code thunk
    naming it, and NT's own read of the slot sees the same VA."""
    system = make_system("vbs")
    nt, space, machine = system.nt, system.nt_space, system.machine
    assert nt is not None and space is not None and machine is not None
    table = nt.variables[vsl.NORMAL_CALL_TABLE]
    assert table.va == _stubs(system).normal_call_table
    assert table.gpa == space.lookup_gpa(table.va)
    cpu = _cpu(system)
    for number, name in LINKED.items():
        slot_va = table.va + number * 8
        gpa = space.lookup_gpa(slot_va)
        if number * 8 < PAGE_SIZE - (table.va % PAGE_SIZE):  # the table's first page
            assert gpa == table.gpa + number * 8
        routine = machine.ram.read_u64(gpa)
        assert routine == cpu.read_u64(slot_va) == space.routines[name]
        thunk = machine.ram.read(space.lookup_gpa(routine), code.THUNK_SIZE)
        assert code.name_of(thunk) == name
    # Every other slot is empty.
    linked = {table.va + n * 8 for n in LINKED}
    for number in range(vsl.NORMAL_CALL_LIMIT):
        if table.va + number * 8 not in linked:
            assert cpu.read_u64(table.va + number * 8) == 0, hex(number)


def test_without_vbs_there_is_no_table(make_system: Callable[..., System]) -> None:
    system = make_system("vbs-off")
    assert system.nt is not None and system.nt.vsl is None
    assert vsl.NORMAL_CALL_TABLE not in system.nt.variables


def test_a_k0_write_of_a_slot_redirects_the_next_normal_call(
    make_system: Callable[..., System],
) -> None:
    """K0 puts its routine (in RWX pool NT grants without HVCI) into the "get physical pages"
    slot; the SK's next normal call runs it at VTL0 CPL0, and it lets NT's routine answer."""
    system = make_system("vbs", record=True)
    cpu, stubs = _cpu(system), _stubs(system)
    slot = stubs.normal_call_slot(NORMAL_GET_PHYSICAL_PAGES)
    original = cpu.read_u64(slot)
    seen: list[int] = []

    def hook(vp: Cpu, block: int) -> int:
        seen.append(vsl.request_fields(vp, block)[0])  # the number the SK asked for
        result = vp.call(original, block)
        return result if isinstance(result, int) else int(NtStatus.UNSUCCESSFUL)

    with code.linking():  # the test links its hook as a loader would
        code.register(HOOK, hook, breakpoint=True)
    hook_va, path = place_rwx(cpu, HOOK, WINDOW_VA)
    assert path == "pool"
    assert _fill(system) == NtStatus.SUCCESS  # before the write: NT's routine alone
    assert system.trace.ran(HOOK) == []
    cpu.write_u64(slot, hook_va)  # an ordinary kernel write into NT's .data
    mark = len(system.trace.events)
    assert _fill(system) == NtStatus.SUCCESS
    assert system.trace.ran(HOOK) == [(0, 0)]
    assert seen == [NORMAL_GET_PHYSICAL_PAGES]
    assert _dispatched(system, mark) == [("serviced", NORMAL_GET_PHYSICAL_PAGES, hook_va)]
    cpu.write_u64(slot, original)  # put back: the next call is NT's again
    assert _fill(system) == NtStatus.SUCCESS
    assert system.trace.ran(HOOK) == [(0, 0)]


@pytest.mark.parametrize("name", ["vbs", "vbs-hvci", "hardened", "legacy-2019"])
def test_a_zeroed_slot_is_not_implemented_for_the_sk(
    make_system: Callable[..., System], name: str
) -> None:
    """The table is ordinary .data wherever VBS runs (KDP protects only what NT or a driver asks
    it to): the K0 write lands, and the SK's normal call gets STATUS_NOT_IMPLEMENTED."""
    system = make_system(name, record=True)
    cpu, stubs = _cpu(system), _stubs(system)
    slot = stubs.normal_call_slot(NORMAL_GET_PHYSICAL_PAGES)
    cpu.write_u64(slot, 0)
    mark = len(system.trace.events)
    assert _fill(system) == NtStatus.NOT_IMPLEMENTED
    assert _dispatched(system, mark) == [("unknown", NORMAL_GET_PHYSICAL_PAGES, 0)]


def test_a_number_beyond_the_table_is_not_implemented(make_system: Callable[..., System]) -> None:
    system = make_system("vbs")
    request = SecureCallArgs(callargs.OP_NORMAL_CALL, 0, 0, [vsl.NORMAL_CALL_LIMIT, 1, 2])
    reply = _stubs(system).dispatch(_cpu(system), request)
    assert reply.op == callargs.OP_NORMAL_REPLY
    assert reply.fields == [int(NtStatus.NOT_IMPLEMENTED)]
    assert _stubs(system).normal_call_slot(vsl.NORMAL_CALL_LIMIT) == 0


def test_the_answer_travels_in_the_processors_block(make_system: Callable[..., System]) -> None:
    """NT's routine reads the request from this processor's block and writes its answer there:
    NTSTATUS in Field1, the pages in Field2.., the rest zero."""
    system = make_system("vbs")
    cpu, stubs = _cpu(system), _stubs(system)
    request = SecureCallArgs(callargs.OP_NORMAL_CALL, 0, 0, [NORMAL_ALLOCATE_PAGES, 2])
    reply = stubs.dispatch(cpu, request)
    status, first, second, *rest = reply.fields
    assert status == NtStatus.SUCCESS and first and second and first != second
    assert rest == [0] * (callargs.FIELDS - 3)
    assert vsl.request_fields(cpu, stubs.block(cpu)) == reply.fields
    for pfn in (first, second):
        assert system.nt is not None and system.nt.free_page(cpu, pfn)


def test_under_hvci_the_redirect_lands_but_attacker_code_does_not_run(
    make_system: Callable[..., System],
) -> None:
    """HVCI decides the call, not the table: the slot names a page SKCI never validated, so
    NT's call to it faults and NT bugchecks (as A3-RWX's jump does)."""
    system = make_system("vbs-hvci", record=True)
    cpu, stubs = _cpu(system), _stubs(system)
    with code.linking():
        code.register(HOOK, lambda vp, block: 0, breakpoint=True)
    hook_va, path = place_rwx(cpu, HOOK, WINDOW_VA)
    assert path == "pte"  # NT refuses RWX pool under HVCI; the attacker's own PTE then
    cpu.write_u64(stubs.normal_call_slot(NORMAL_GET_PHYSICAL_PAGES), hook_va)
    with pytest.raises(Bugcheck):
        _fill(system)
    assert system.trace.ran(HOOK) == []


def _relink_syscall_entry(cpu: Cpu) -> str:
    """K0: NT's loader-time linking, called after boot (a third audit's step)."""
    nt = cpu.kernel()
    assert isinstance(nt, NtKernel)
    try:
        nt.register_service("KiSystemCall64", 0, lambda *a: 0)
    except RuntimeError as refused:
        return type(refused).__name__
    return "linked"


def test_nt_refuses_to_relink_a_routine_after_boot() -> None:
    """register_service (and Vsl.register) check that NT is still being built before they bind
    a name to code, so after boot a call changes neither the registry nor KiServiceTable."""
    from vbsim.attacks.context import AttackContext
    from vbsim.boot.disk import Disk

    policy = preset("hardened")
    ctx = AttackContext(policy, "hardened", Disk.install(policy))
    ctx.boot()
    thunk = code.encode_thunk("nt.KiSystemCall64")
    before = code.decode_thunk(thunk)
    assert ctx.kernel(_relink_syscall_entry) == "RuntimeError"
    assert code.decode_thunk(thunk) == before
