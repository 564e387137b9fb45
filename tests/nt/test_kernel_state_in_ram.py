"""NT's security state lives in VTL0 RAM and NT decides from it (issue 10 part 1, NT side)."""

from __future__ import annotations

import pytest

from vbsim.attacks.catalogue import d01_d05_data_only as data_only
from vbsim.attacks.model import PRESET_ORDER
from vbsim.attacks.runner import run
from vbsim.boot.chain import System, boot, system_values
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.nt import notify
from vbsim.nt.kernel import NtKernel
from vbsim.nt.layouts import (
    EPROCESS,
    ETW_GUID_ENTRY,
    ETW_REG_ENTRY,
    LIST_ENTRY,
    TOKEN,
    HostReader,
    Privilege,
    Protection,
    PsProtectedSigner,
    PsProtectedType,
    PsProtection,
)
from vbsim.nt.process import host_processes, host_view
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset

from .userland import ADMIN_DEBUG, USER, spawn


@pytest.fixture(scope="module")
def system() -> System:
    return boot(preset("vbs"))


def _nt(system: System) -> NtKernel:
    assert system.nt is not None
    return system.nt


def _reader(system: System) -> HostReader:
    assert system.machine is not None
    return HostReader(system.machine.ram, DIRECT_MAP)


def test_layout_offsets_match_vergilius_19041() -> None:
    assert EPROCESS.UniqueProcessId.offset == 0x440
    assert EPROCESS.ActiveProcessLinks.offset == 0x448
    assert EPROCESS.Token.offset == 0x4B8
    assert EPROCESS.ImageFileName.offset == 0x5A8 and EPROCESS.ImageFileName.size == 15
    assert EPROCESS.Protection.offset == 0x87A and EPROCESS.Protection.size == 1
    assert EPROCESS.DirectoryTableBase.offset == 0x28
    assert (TOKEN.PrivilegesPresent.offset, TOKEN.PrivilegesEnabled.offset) == (0x40, 0x48)
    assert TOKEN.PrivilegesEnabledByDefault.offset == 0x50
    assert (LIST_ENTRY.Flink.offset, LIST_ENTRY.Blink.offset) == (0, 8)
    assert (ETW_REG_ENTRY.GuidEntry.offset, ETW_GUID_ENTRY.ProviderEnableInfo.offset) == (
        0x20,
        0x60,
    )
    assert (Privilege.SE_TCB, Privilege.SE_LOAD_DRIVER, Privilege.SE_DEBUG) == (7, 10, 20)
    ppl = PsProtection.make(PsProtectedType.PROTECTED_LIGHT, PsProtectedSigner.LSA)
    assert ppl == Protection.PPL == 0x41 and Protection.SYSTEM == 0x72
    assert PsProtection.kind(0x72) == 2 and PsProtection.signer(0x72) == 7


def test_process_list_walked_from_ram_names_every_process(system: System) -> None:
    nt = _nt(system)
    assert system.machine is not None
    head = nt.variable("PsActiveProcessHead")
    views = host_processes(system.machine.ram, head.va, head.gpa)
    assert [v.pid for v in views] == sorted(v.pid for v in views)  # PIDs in creation order
    assert views[0].name == "System" and views[0].protection == Protection.SYSTEM
    # Every listed process is the one PspCidTable names for its PID.
    assert all(system.lookup_process(v.pid) == system.processes()[v.pid] for v in views)
    assert all(v.eprocess == system.processes()[v.pid].eprocess for v in views)
    # Blink chain closes too: the list is doubly linked.
    reader = _reader(system)
    last = views[-1].eprocess + EPROCESS.ActiveProcessLinks.offset
    assert system.machine.ram.read_u64(head.gpa + 8) == last
    assert reader.field(last, LIST_ENTRY.Flink) == head.va


def test_a_token_swap_with_plain_writes_changes_the_next_privilege_decision(
    system: System,
) -> None:
    user = spawn(system, "swap.exe", USER)
    args = ("Test\\Swap", 1, user.scratch.base)
    assert user.returned("tests.nt.set_value", *args) == NtStatus.ACCESS_DENIED
    reader = _reader(system)
    system_token = reader.field(system.process(4).eprocess, EPROCESS.Token)
    reader.set_field(user.process.eprocess, EPROCESS.Token, system_token)
    assert user.view.user == "SYSTEM" and user.view.holds(Privilege.SE_TCB)
    assert user.returned("tests.nt.set_value", *args) == NtStatus.SUCCESS


def test_the_ppl_byte_decides_open_process(system: System) -> None:
    nt = _nt(system)
    victim = spawn(system, "victim.exe", USER)
    admin = spawn(system, "debugger.exe", ADMIN_DEBUG)
    args = (victim.process.pid, victim.scratch.base, 8, admin.scratch.base)
    assert admin.returned("tests.nt.read_process", *args)[0] == NtStatus.SUCCESS
    reader = _reader(system)
    reader.set_field(victim.process.eprocess, EPROCESS.Protection, Protection.PPL)
    assert admin.returned("tests.nt.read_process", *args)[0] == NtStatus.ACCESS_DENIED
    reader.set_field(admin.process.eprocess, EPROCESS.Protection, Protection.PPL)
    assert admin.returned("tests.nt.read_process", *args)[0] == NtStatus.SUCCESS
    del nt


def test_the_callback_array_and_the_etw_flag_decide(system: System) -> None:
    nt = _nt(system)
    assert system.machine is not None
    ram = system.machine.ram
    reader = _reader(system)
    # The EDR saw the processes created after it loaded; an emptied slot hides the next one.
    before = nt.create_process(system.machine.bsp.cpu, "seen.exe")
    array = nt.variable(notify.NOTIFY_ARRAY)
    slot_values = [ram.read_u64(array.gpa + 8 * i) for i in range(4)]
    assert any(slot_values)
    ctx_log = _edr_pids(system)
    assert before.pid in ctx_log
    for i, value in enumerate(slot_values):
        if value:
            ram.write_u64(array.gpa + 8 * i, 0)
    hidden = nt.create_process(system.machine.bsp.cpu, "hidden.exe")
    assert hidden.pid not in _edr_pids(system)
    # ETW: IsEnabled gates the Threat-Intelligence event of a cross-process read.
    handle = ram.read_u64(nt.variable(notify.ETW_TI_HANDLE).gpa)
    guid = reader.field(handle, ETW_REG_ENTRY.GuidEntry)
    cpu = system.machine.bsp.cpu
    assert notify.etw_ti_log(nt, cpu, 13, 1, 2)
    reader.set_field(guid, ETW_GUID_ENTRY.ProviderEnableInfo, 0)
    assert not notify.etw_ti_log(nt, cpu, 13, 1, 2)


def _edr_pids(system: System) -> list[int]:
    from vbsim.attacks.catalogue.d01_d05_data_only import edr_log

    class _Ctx:  # the goal helper needs only .booted
        booted = system

    return edr_log(_Ctx())  # type: ignore[arg-type]


@pytest.mark.parametrize("preset_name", PRESET_ORDER)
@pytest.mark.parametrize("scenario", data_only.SCENARIOS, ids=lambda s: s.id)
def test_d1_d5_match_the_record(scenario: object, preset_name: str) -> None:
    from vbsim.attacks.model import Scenario

    assert isinstance(scenario, Scenario)
    result, _ = run(scenario, preset_name)
    assert result.outcome == scenario.expected[preset_name], (result.mechanism, result.detail)


def test_d5_is_stopped_by_kdp_on_ci_policy_not_by_hvci_alone() -> None:
    result, ctx = run(data_only.D5, "vbs-hvci")
    assert result.mechanism == "slat" and ctx.bugchecked


def test_nt_kernel_holds_no_ext_free_state_for_processes(system: System) -> None:
    process = system.process(4)
    for name in ("token", "protection", "terminated", "exit_status"):
        assert not hasattr(process, name)
    assert host_view(_reader(system).memory, process.eprocess).user == "SYSTEM"


def test_ps_loaded_module_list_in_ram_decides_already_loaded(system: System) -> None:
    from vbsim.nt import drivers
    from vbsim.nt.layouts import KLDR_DATA_TABLE_ENTRY as KLDR

    nt = _nt(system)
    assert system.machine is not None
    vp = system.machine.bsp
    entry = drivers.find_module(nt, vp.cpu, notify.EDR_DRIVER)
    assert entry
    edr = drivers.host_driver(system.machine.ram, nt, notify.EDR_DRIVER)
    assert edr is not None
    reader = _reader(system)
    assert reader.field(entry, KLDR.DllBase) == edr.base
    assert drivers.load_driver(nt, vp.cpu, notify.EDR_DRIVER) == drivers.STATUS_IMAGE_ALREADY_LOADED
    # Unlink the entry (a rootkit hiding itself): NT no longer finds it on the list.
    from vbsim.nt.process import remove_entry

    remove_entry(vp.cpu, entry)
    assert not drivers.find_module(nt, vp.cpu, notify.EDR_DRIVER)


def test_nt_holds_no_policy_and_reads_its_configuration_from_the_hive() -> None:
    from vbsim.nt import drivers, registry

    system = boot(preset("vbs-hvci"))
    nt = _nt(system)
    assert system.machine is not None
    vp = system.machine.bsp
    assert not hasattr(nt, "policy") and not hasattr(nt, "registry")
    assert system_values(system)[registry.HVCI_KEY] == 1
    assert drivers.hvci_enabled(nt, vp.cpu)
    # A run-time change of the value takes effect at the next boot: CI latched the boot's
    # configuration into CiPolicy (KDP-protected), and that flag in RAM is what NT reads.
    assert registry.set_value(nt, vp.cpu, registry.HVCI_KEY, 0)
    assert drivers.hvci_enabled(nt, vp.cpu)
    flag = nt.ci_options_va + drivers.CI_HVCI_OFFSET
    gpa = system.nt_space.lookup_gpa(flag) if system.nt_space else None
    assert gpa is not None
    system.machine.ram.write(gpa, bytes(8))  # the latched flag itself (a debugger's write)
    assert not drivers.hvci_enabled(nt, vp.cpu)  # the next decision reads it again


def test_token_ids_come_from_a_counter_in_ram(system: System) -> None:
    """ExpLuid is an NT .data variable: a kernel write moves the next TokenId.  (PIDs come
    from PspCidTable: tests/nt/test_cid_table.py.)"""
    reader = _reader(system)
    assert system.machine is not None
    luid = _nt(system).variables["ExpLuid"].gpa
    system.machine.ram.write(luid, (0x7777_0000).to_bytes(8, "little"))
    after = spawn(system, "second.exe", USER)
    token = reader.field(after.process.eprocess, EPROCESS.Token) & ~0xF  # EX_FAST_REF
    assert reader.field(token, TOKEN.TokenId) == 0x7777_0000
