"""A device-control request reaches the driver as an IRP in NT's pool (issue 10 part 2:
arguments are register values and memory): DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL]
is called with the driver object and the IRP, whose current stack location names the
IOCTL and lengths and whose SystemBuffer holds the caller's bytes; what goes back to the caller
is IoStatus.Information bytes of that buffer, as the driver left them."""

from __future__ import annotations

from tests.hvci.kit import make_env

from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.nt import drivers
from vbsim.nt.layouts import DRIVER_OBJECT, IO_STACK_LOCATION, IRP, IRP_MJ_DEVICE_CONTROL
from vbsim.ntstatus import NtStatus

SEEN: list[dict[str, int | bytes]] = []


@guest_code("tests.nt.irp_spy")
def _irp_spy(cpu: Cpu, device: int, irp: int) -> int:
    """A dispatch routine that records the IRP as it finds it, then answers with four bytes."""
    stack = cpu.read_u64(irp + IRP.CurrentStackLocation.offset)
    buffer = cpu.read_u64(irp + IRP.SystemBuffer.offset)
    SEEN.append(
        {
            "device": device,
            "irp": irp,
            "major": cpu.read(stack + IO_STACK_LOCATION.MajorFunction.offset, 1)[0],
            "code": cpu.read_u32(stack + IO_STACK_LOCATION.IoControlCode.offset),
            "in": cpu.read_u32(stack + IO_STACK_LOCATION.InputBufferLength.offset),
            "out": cpu.read_u32(stack + IO_STACK_LOCATION.OutputBufferLength.offset),
            "data": cpu.read(buffer, 16),
        }
    )
    cpu.write(buffer + 8, b"SPY!SPY!")
    return drivers.complete_request(cpu, irp, int(NtStatus.SUCCESS), 12)


def test_the_driver_gets_an_irp_in_pool_and_information_bytes_go_back() -> None:
    env = make_env("vbs-off")
    assert env.load(drivers.SAMPLE_DRIVER) == 0
    assert env.system.machine is not None and env.system.nt_space is not None
    sample = env.driver(drivers.SAMPLE_DRIVER)
    slot = sample.object_va + DRIVER_OBJECT.major(IRP_MJ_DEVICE_CONTROL)
    spy = env.system.nt_space.install("tests.nt.irp_spy")  # a debugger's hook, as in D8's test
    env.system.machine.ram.write(slot - DIRECT_MAP, spy.to_bytes(8, "little"))
    SEEN.clear()
    status, value = env.ioctl(drivers.SAMPLE_DRIVER, 0x0022_2004, 0x1122_3344_5566_7788, 0x99)
    [seen] = SEEN
    assert seen["device"] == sample.object_va and seen["irp"] >= DIRECT_MAP  # a pool page
    assert (seen["major"], seen["code"], seen["in"], seen["out"]) == (0x0E, 0x0022_2004, 16, 16)
    assert seen["data"] == (0x1122_3344_5566_7788).to_bytes(8, "little") + (0x99).to_bytes(
        8, "little"
    )
    # Information = 12: the first twelve bytes of SystemBuffer reach the caller's buffer.
    assert status == NtStatus.SUCCESS
    assert value.to_bytes(8, "little") == b"SPY!" + (0x99).to_bytes(8, "little")[4:]
    # The IRP's page went back to the pool, cleared.
    irp = int(seen["irp"])
    assert env.system.machine.ram.read(irp - DIRECT_MAP, IRP.SIZE) == bytes(IRP.SIZE)


def test_the_vulnerable_driver_reads_its_request_from_system_buffer() -> None:
    env = make_env("vbs-off")
    env.ensure_vulnerable()
    sample_start = DRIVER_OBJECT.DriverStart.offset
    vulnerable = env.driver(drivers.VULNERABLE_DRIVER)
    status, value = env.ioctl(
        drivers.VULNERABLE_DRIVER, drivers.IOCTL_READ8, vulnerable.object_va + sample_start
    )
    assert (status, value) == (NtStatus.SUCCESS, vulnerable.base)
    status, _ = env.ioctl(drivers.VULNERABLE_DRIVER, 0x1234, 0)
    assert status == drivers.STATUS_INVALID_DEVICE_REQUEST
