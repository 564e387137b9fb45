"""The time each kernel judges certificates at is its own, in its own memory (issue 10 part 1):
the CMOS clock read through ports 0x70/0x71 at boot, kept by NT in ``nt!KeBootTime`` and by
the Secure Kernel in its state page.  A K0 write to NT's copy moves DSE's clock (a driver
whose certificate has expired by then is refused) and leaves SKCI's alone."""

from __future__ import annotations

import datetime as dt

import pytest
from tests.hvci.kit import make_env

from vbsim.boot.chain import boot
from vbsim.guest.rtc import filetime_to_datetime, read_filetime
from vbsim.hw import rtc
from vbsim.nt.drivers import SAMPLE_DRIVER
from vbsim.nt.kernel import BOOT_TIME
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset
from vbsim.sk.layouts import State

#: After the model PKI's certificates end (valid 2020-01-01 .. 2070-01-01).
AFTER_EXPIRY = dt.datetime(2075, 6, 1, tzinfo=dt.UTC)
EPOCH = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)


def _filetime(when: dt.datetime) -> int:
    return (when - EPOCH) // dt.timedelta(microseconds=1) * 10


def test_the_cmos_clock_reads_back_through_the_ports() -> None:
    system = boot(preset("vbs-off"))
    assert system.machine is not None
    when = dt.datetime(2031, 2, 28, 23, 59, 58, tzinfo=dt.UTC)
    system.machine.rtc.set(when)
    cpu = system.machine.bsp.cpu
    assert filetime_to_datetime(read_filetime(cpu)) == when
    # A guest write through the data port sets the clock (BCD): the year register to 44.
    cpu.out(rtc.INDEX_PORT, 1, 0x80 | rtc.YEAR)  # bit 7 is the NMI mask, not the index
    cpu.out(rtc.DATA_PORT, 1, 0x44)
    assert filetime_to_datetime(read_filetime(cpu)).year == 2044
    # No clock answering (all ones) reads as no date.
    system.machine.bus.ports.pop(rtc.INDEX_PORT)
    system.machine.bus.ports.pop(rtc.DATA_PORT)
    assert read_filetime(cpu) == 0


@pytest.mark.parametrize("name", ["vbs-off", "vbs-hvci"])
def test_each_kernel_keeps_the_boot_time_it_read(name: str) -> None:
    system = boot(preset(name))
    assert system.machine is not None and system.nt is not None
    ram = system.machine.ram
    nt_time = int.from_bytes(ram.read(system.nt.variables[BOOT_TIME].gpa, 8), "little")
    assert abs(filetime_to_datetime(nt_time) - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    if system.sk is not None:
        at = system.sk.state_gpa + State.BOOT_TIME.offset
        assert int.from_bytes(ram.read(at, 8), "little") == nt_time


def test_a_k0_write_to_nts_clock_expires_every_certificate_for_dse() -> None:
    env = make_env("vbs")
    assert env.system.nt is not None and env.system.machine is not None
    clock = env.system.nt.variables[BOOT_TIME].gpa
    env.system.machine.ram.write(clock, _filetime(AFTER_EXPIRY).to_bytes(8, "little"))
    assert env.load(SAMPLE_DRIVER) == NtStatus.INVALID_IMAGE_HASH
    [refused] = env.events("driver", "dse")[-1:]
    assert refused.outcome == "refused"
    assert refused.detail["failure"] == "certificate-not-time-valid"
    assert "2075-06-01" in str(refused.detail["detail"])


def test_skci_keeps_its_own_time_when_nts_copy_or_the_clock_moves() -> None:
    env = make_env("vbs-hvci")
    assert env.system.nt is not None and env.system.machine is not None
    clock = env.system.nt.variables[BOOT_TIME].gpa
    env.system.machine.ram.write(clock, _filetime(AFTER_EXPIRY).to_bytes(8, "little"))
    env.system.machine.rtc.set(AFTER_EXPIRY)
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS  # SKCI decides, at the SK's time
