"""NT finds the running process, a process's address space and a driver's entry points in RAM
(issue 10): the processor block names the current EPROCESS, a context switch loads CR3 from
KPROCESS.DirectoryTableBase, the I/O manager calls DRIVER_OBJECT.DriverInit and
MajorFunction[], and host tools list processes and drivers by walking the lists in RAM, so that
the classic DKOM edits (unlinking, a DirectoryTableBase swap, an IRP hook) have their real
effect."""

from __future__ import annotations

import pytest
from tests.hvci.kit import make_env

from vbsim.boot.chain import System, boot
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.nt import drivers
from vbsim.nt.layouts import (
    DRIVER_OBJECT,
    EPROCESS,
    IRP_MJ_DEVICE_CONTROL,
    KLDR_DATA_TABLE_ENTRY,
    KPCR,
    LIST_ENTRY,
    HostReader,
)
from vbsim.policy import preset

from .userland import USER, spawn


@pytest.fixture(scope="module")
def system() -> System:
    return boot(preset("vbs"))


def _reader(system: System) -> HostReader:
    assert system.machine is not None
    return HostReader(system.machine.ram, DIRECT_MAP)


def _unlink(reader: HostReader, entry: int) -> tuple[int, int]:
    """What a rootkit does to a LIST_ENTRY: its neighbours point past it.  Returns (Flink,
    Blink) so the test can put it back."""
    flink, blink = reader.field(entry, LIST_ENTRY.Flink), reader.field(entry, LIST_ENTRY.Blink)
    reader.set_field(blink, LIST_ENTRY.Flink, flink)
    reader.set_field(flink, LIST_ENTRY.Blink, blink)
    return flink, blink


def _relink(reader: HostReader, entry: int, flink: int, blink: int) -> None:
    reader.set_field(blink, LIST_ENTRY.Flink, entry)
    reader.set_field(flink, LIST_ENTRY.Blink, entry)


def test_the_layouts_are_vergilius_19041() -> None:
    assert DRIVER_OBJECT.DriverStart.offset == 0x18 and DRIVER_OBJECT.DriverSize.offset == 0x20
    assert DRIVER_OBJECT.DriverSection.offset == 0x28 and DRIVER_OBJECT.DriverInit.offset == 0x58
    assert DRIVER_OBJECT.DriverUnload.offset == 0x68
    assert DRIVER_OBJECT.major(IRP_MJ_DEVICE_CONTROL) == 0xE0 and DRIVER_OBJECT.SIZE == 0x150


def test_the_current_process_is_the_one_the_processor_block_names(system: System) -> None:
    nt = system.nt
    assert nt is not None and system.machine is not None
    cpu = system.machine.bsp.cpu
    block = nt.processor_block(cpu.index)
    assert system.nt_space is not None
    # The block is in NT's .data (not the direct map): a tool reads it at its GPA.
    reader = HostReader(system.machine.ram, block - system.nt_space.lookup_gpa(block))
    user = spawn(system, "current.exe", USER)
    assert reader.field(block, KPCR.CurrentProcess) == 0  # NT's own context: no process
    assert nt.process_of(cpu) is None
    reader.set_field(block, KPCR.CurrentProcess, user.process.eprocess)
    try:
        assert nt.process_of(cpu) == user.process
    finally:
        reader.set_field(block, KPCR.CurrentProcess, 0)
    # A user thread runs with its process named there, and the block is restored after.
    assert user.returned("tests.nt.read", user.scratch.base, 1) == b"\0"
    assert reader.field(block, KPCR.CurrentProcess) == 0


def test_a_directory_table_base_swap_changes_the_next_context_switch(system: System) -> None:
    """KiSwapProcess loads CR3 from KPROCESS.DirectoryTableBase in RAM: write another process's
    value there and the thread runs in that process's address space."""
    reader = _reader(system)
    victim = spawn(system, "victim.exe", USER)
    attacker = spawn(system, "swapper.exe", USER)
    assert attacker.scratch.base == victim.scratch.base  # the same layout: the same VAs
    victim.returned("tests.nt.write", victim.scratch.base, b"victim's data")
    assert attacker.returned("tests.nt.read", attacker.scratch.base, 13) == bytes(13)
    own = reader.field(attacker.process.eprocess, EPROCESS.DirectoryTableBase)
    theirs = reader.field(victim.process.eprocess, EPROCESS.DirectoryTableBase)
    reader.set_field(attacker.process.eprocess, EPROCESS.DirectoryTableBase, theirs)
    try:
        assert attacker.returned("tests.nt.read", attacker.scratch.base, 13) == b"victim's data"
    finally:
        reader.set_field(attacker.process.eprocess, EPROCESS.DirectoryTableBase, own)
    assert attacker.returned("tests.nt.read", attacker.scratch.base, 13) == bytes(13)


def test_an_unlinked_process_is_gone_from_the_list_tools_walk(system: System) -> None:
    reader = _reader(system)
    hidden = spawn(system, "hidden.exe", USER)
    assert hidden.process.pid in {v.pid for v in system.process_views()}
    links = hidden.process.eprocess + EPROCESS.ActiveProcessLinks.offset
    flink, blink = _unlink(reader, links)
    try:
        assert hidden.process.pid not in {v.pid for v in system.process_views()}
        assert hidden.process.pid not in system.processes()
        # The process still runs: unlinking hides it from the list, nothing more.
        assert hidden.returned("tests.nt.read", hidden.scratch.base, 1) == b"\0"
    finally:
        _relink(reader, links, flink, blink)
    assert system.processes()[hidden.process.pid] == hidden.process


def test_an_irp_hook_redirects_a_devices_requests() -> None:
    """IofCallDriver calls DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] as RAM holds it:
    point the sample driver's entry at the vulnerable driver's dispatch routine and the sample
    device performs READ8; clear it and the device refuses every request."""
    env = make_env("vbs-off")
    assert env.load(drivers.SAMPLE_DRIVER) == 0
    env.ensure_vulnerable()
    assert env.system.machine is not None
    reader = HostReader(env.system.machine.ram, DIRECT_MAP)
    sample = env.driver(drivers.SAMPLE_DRIVER)
    vulnerable = env.driver(drivers.VULNERABLE_DRIVER)
    assert isinstance(sample, drivers.LoadedDriver)
    assert isinstance(vulnerable, drivers.LoadedDriver)
    slot = sample.object_va + DRIVER_OBJECT.major(IRP_MJ_DEVICE_CONTROL)
    start = sample.object_va + DRIVER_OBJECT.DriverStart.offset
    # Unhooked, the sample driver echoes its buffer back.
    assert env.ioctl(drivers.SAMPLE_DRIVER, drivers.IOCTL_READ8, start, 5) == (0, 5)
    hook = reader.u64(vulnerable.object_va + DRIVER_OBJECT.major(IRP_MJ_DEVICE_CONTROL))
    env.system.machine.ram.write(slot - DIRECT_MAP, hook.to_bytes(8, "little"))
    assert env.ioctl(drivers.SAMPLE_DRIVER, drivers.IOCTL_READ8, start, 5) == (0, sample.base)
    env.system.machine.ram.write(slot - DIRECT_MAP, bytes(8))
    status, _ = env.ioctl(drivers.SAMPLE_DRIVER, drivers.IOCTL_READ8, start, 5)
    assert status == drivers.STATUS_INVALID_DEVICE_REQUEST


def test_an_unlinked_driver_is_gone_from_the_module_list() -> None:
    env = make_env("vbs-off")
    assert env.load(drivers.SAMPLE_DRIVER) == 0
    assert env.system.machine is not None
    reader = HostReader(env.system.machine.ram, DIRECT_MAP)
    assert drivers.SAMPLE_DRIVER in env.system.modules()
    sample = env.driver(drivers.SAMPLE_DRIVER)
    assert isinstance(sample, drivers.LoadedDriver)
    entry = reader.field(sample.object_va, DRIVER_OBJECT.DriverSection)
    assert reader.field(entry, KLDR_DATA_TABLE_ENTRY.DllBase) == sample.base
    _unlink(reader, entry + KLDR_DATA_TABLE_ENTRY.InLoadOrderLinks.offset)
    assert drivers.SAMPLE_DRIVER not in env.system.modules()
    # The loader finds modules by walking the same list: an unlinked driver loads again.
    assert env.load(drivers.SAMPLE_DRIVER) != drivers.STATUS_IMAGE_ALREADY_LOADED


def test_the_next_driver_goes_where_the_cursor_in_ram_says() -> None:
    """MiObtainSystemVa's model: the image cursor is an NT .data variable, so a kernel write to
    it decides where the next driver is mapped."""
    env = make_env("vbs-off")
    nt = env.nt
    cursor = nt.variables[drivers.IMAGE_CURSOR]
    assert env.system.machine is not None
    ram = env.system.machine.ram
    chosen = 0xFFFF_F806_4000_0000
    ram.write(cursor.gpa, chosen.to_bytes(8, "little"))
    assert env.load(drivers.SAMPLE_DRIVER) == 0
    sample = env.driver(drivers.SAMPLE_DRIVER)
    assert isinstance(sample, drivers.LoadedDriver) and sample.base == chosen
    assert int.from_bytes(ram.read(cursor.gpa, 8), "little") > chosen
