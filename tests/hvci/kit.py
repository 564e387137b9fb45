"""Helpers for the HVCI tests: booting, an administrator's user-mode client, the K0 primitive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vbsim.boot.chain import System, boot
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.code import guest_code
from vbsim.hw.slat import KX, W
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SHIFT
from vbsim.nt import drivers
from vbsim.nt.kernel import NtKernel
from vbsim.nt.process import Process, Token
from vbsim.nt.syscalls import syscall
from vbsim.policy import Policy, preset
from vbsim.trace import Event

ADMIN = Token("admin", admin=True, load_driver=True)
USER = Token("user")
NAME_AT = 0
IOCTL_AT = 512


@guest_code("test.hvci.load_driver")
def _user_load_driver(vp: VirtualProcessor, buffer: int, name: str) -> int:
    """User mode: put the driver name in its own memory, then NtLoadDriver."""
    raw = name.encode()
    vp.write(buffer + NAME_AT, raw)
    return syscall(vp, "NtLoadDriver", buffer + NAME_AT, len(raw))


@guest_code("test.hvci.ioctl")
def _user_ioctl(
    vp: VirtualProcessor, buffer: int, device: str, code: int, address: int, value: int
) -> tuple[int, int]:
    """User mode: DeviceIoControl on ``device`` with the 16-byte {address, value} buffer."""
    raw = device.encode()
    vp.write(buffer + NAME_AT, raw)
    vp.write(buffer + IOCTL_AT, address.to_bytes(8, "little") + value.to_bytes(8, "little"))
    status = syscall(
        vp, "NtDeviceIoControlFile", buffer + NAME_AT, len(raw), code, buffer + IOCTL_AT
    )
    return status, int.from_bytes(vp.read(buffer + IOCTL_AT + 8, 8), "little")


@dataclass
class Env:
    system: System
    nt: NtKernel
    vp: VirtualProcessor
    process: Process
    buffer: int
    entries: dict[str, int]

    @property
    def hvci(self) -> bool:
        return drivers.hvci_enabled(self.nt, self.vp.cpu)

    def user(self, routine: str, *args: Any, process: Process | None = None) -> Any:
        target = process or self.process
        run = self.nt.run_user(self.vp.cpu, target, self.entries[routine], *args)
        assert run.terminated is None, run.terminated
        return run.returned

    def load(self, name: str) -> int:
        status = self.user("test.hvci.load_driver", self.buffer, name)
        assert isinstance(status, int)
        return status

    def ioctl(self, device: str, code: int, address: int, value: int = 0) -> tuple[int, int]:
        result = self.user("test.hvci.ioctl", self.buffer, device, code, address, value)
        assert isinstance(result, tuple)
        return result

    def k0_write(self, address: int, value: int) -> int:
        """The K0 write primitive: the vulnerable signed driver's WRITE8 (loaded on demand)."""
        self.ensure_vulnerable()
        return self.ioctl(drivers.VULNERABLE_DRIVER, drivers.IOCTL_WRITE8, address, value)[0]

    def k0_read(self, address: int) -> int:
        self.ensure_vulnerable()
        status, value = self.ioctl(drivers.VULNERABLE_DRIVER, drivers.IOCTL_READ8, address)
        assert status == 0
        return value

    def find_driver(self, name: str) -> drivers.LoadedDriver | None:
        """The loaded driver ``name`` as RAM describes it now (None: not loaded)."""
        assert self.system.machine is not None
        return drivers.host_driver(self.system.machine.ram, self.nt, name)

    def driver(self, name: str) -> drivers.LoadedDriver:
        found = self.find_driver(name)
        assert found is not None, f"{name} is not loaded"
        return found

    def ensure_vulnerable(self) -> None:
        if self.find_driver(drivers.VULNERABLE_DRIVER) is None:
            assert self.load(drivers.VULNERABLE_DRIVER) == 0

    def rights(self, pfn: int) -> int:
        slat = self.system.machine.slat if self.system.machine else None
        return 0xF if slat is None else slat.rights(0, pfn)

    def events(self, kind: str | None = None, mechanism: str | None = None) -> list[Event]:
        return self.system.trace.find(kind, mechanism)


def make_env(policy: Policy | str) -> Env:
    chosen = preset(policy) if isinstance(policy, str) else policy
    system = boot(chosen)
    assert system.booted, system.halted
    assert system.nt is not None and system.machine is not None
    nt = system.nt
    vp = system.machine.bsp
    process = nt.create_process(vp.cpu, "admin.exe", ADMIN)
    region = nt.allocate(vp.cpu, process, 4096)
    entries = nt.map_code(vp.cpu, process, ["test.hvci.load_driver", "test.hvci.ioctl"])
    return Env(system, nt, vp, process, region.base, entries)


def wkx_pages(system: System) -> list[int]:
    """Host-side scan of the hypervisor's VTL0 SLAT: pages both writable and kernel-executable."""
    assert system.machine is not None and system.machine.slat is not None
    slat = system.machine.slat
    return [
        gpn for gpn in range(slat.pages) if slat.rights(0, gpn) & W and slat.rights(0, gpn) & KX
    ]


def direct_va(pfn: int) -> int:
    return DIRECT_MAP + (pfn << PAGE_SHIFT)
