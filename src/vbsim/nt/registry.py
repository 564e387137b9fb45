"""The SYSTEM hive in VTL0 RAM: the registry values NT (and VBS's configuration) reads.

winload loads the hive from disk into memory before NT runs (vbs-internals §1.1 rows 3-6); NT's
configuration manager then serves ``NtQueryValueKey`` / ``NtSetValueKey`` from it, and a clean
shutdown writes the persisted values back to disk (``tests/boot/helpers.shut_down``).

[model] Real hives are bins of cells (_CM_KEY_NODE, _CM_KEY_VALUE; Windows Internals 7th ed.
part 2 ch. 10 "Registry internals"); the model flattens one page into 32 value cells of 128
bytes: u16 name length, the UTF-8 full key path (at most 110 bytes), u32 type (REG_QWORD = 11,
winnt.h) at 0x70, u64 data at 0x78.  A cell with name length 0 is free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from vbsim.hw.x86 import PAGE_SIZE

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.nt.kernel import NtKernel

#: The configuration the boot chain records in the hive (the keys Windows uses):
#: Memory integrity (HVCI), Microsoft Learn "Enable virtualization-based protection of code
#: integrity"; Credential Guard, Microsoft Learn "Configure Credential Guard" (LsaCfgFlags).
HVCI_KEY = (
    r"HKLM\SYSTEM\CurrentControlSet\Control\DeviceGuard\Scenarios"
    r"\HypervisorEnforcedCodeIntegrity\Enabled"
)
LSA_CFG_FLAGS_KEY = r"HKLM\SYSTEM\CurrentControlSet\Control\Lsa\LsaCfgFlags"
#: LsaCfgFlags' values (Microsoft Learn, "Configure Credential Guard" and the unattend setting
#: "Microsoft-Windows-DeviceGuard-Unattend LsaCfgFlags"): 0 disabled (the default), 1 enabled
#: with UEFI lock, 2 enabled without lock.  Any other value enables nothing.
LSA_CFG_DISABLED = 0
LSA_CFG_ENABLED_WITH_UEFI_LOCK = 1
LSA_CFG_ENABLED_WITHOUT_LOCK = 2

CELL_SIZE = 0x80
CELLS = PAGE_SIZE // CELL_SIZE
NAME_MAX = 0x6E
NAME_AT, TYPE_AT, DATA_AT = 0x02, 0x70, 0x78
#: winnt.h REG_QWORD.
REG_QWORD = 11


class _Mem(Protocol):
    def read(self, address: int, length: int, /) -> bytes: ...
    def write(self, address: int, data: bytes, /) -> object: ...


def _encode(key: str) -> bytes | None:
    raw = key.encode("utf-8")
    return raw if 0 < len(raw) <= NAME_MAX else None


def _find(mem: _Mem, base: int, raw: bytes) -> tuple[int, int]:
    """(cell holding ``raw`` or -1, first free cell or -1)."""
    free = -1
    for index in range(CELLS):
        cell = base + index * CELL_SIZE
        head = mem.read(cell, NAME_AT + NAME_MAX)
        length = int.from_bytes(head[:2], "little")
        if not length:
            free = index if free < 0 else free
        elif head[NAME_AT : NAME_AT + length] == raw and length == len(raw):
            return index, free
    return -1, free


def _store(mem: _Mem, base: int, key: str, value: int) -> bool:
    raw = _encode(key)
    if raw is None:
        return False
    found, free = _find(mem, base, raw)
    index = found if found >= 0 else free
    if index < 0:
        return False
    cell = base + index * CELL_SIZE
    body = bytearray(CELL_SIZE)
    body[0:2] = len(raw).to_bytes(2, "little")
    body[NAME_AT : NAME_AT + len(raw)] = raw
    body[TYPE_AT : TYPE_AT + 4] = REG_QWORD.to_bytes(4, "little")
    body[DATA_AT : DATA_AT + 8] = (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")
    mem.write(cell, bytes(body))
    return True


class _CpuMem:
    """Loads and stores through a processor (NT's own paging)."""

    __slots__ = ("cpu",)

    def __init__(self, cpu: Cpu) -> None:
        self.cpu = cpu

    def read(self, address: int, length: int, /) -> bytes:
        return self.cpu.read(address, length)

    def write(self, address: int, data: bytes, /) -> None:
        self.cpu.write(address, data)


# -- NT (guest code) -----------------------------------------------------------------------------
def query(nt: NtKernel, cpu: Cpu, key: str) -> int | None:
    """CmQueryValueKey: the REG_QWORD under ``key`` as the hive in RAM holds it now."""
    raw = _encode(key)
    if raw is None:
        return None
    mem = _CpuMem(cpu)
    found, _ = _find(mem, nt.hive_va, raw)
    if found < 0:
        return None
    cell = nt.hive_va + found * CELL_SIZE
    return int.from_bytes(cpu.read(cell + DATA_AT, 8), "little")


def credential_guard_configured(nt: NtKernel, cpu: Cpu) -> bool:
    """Whether the SYSTEM hive in RAM enables Credential Guard now: ``LsaCfgFlags`` 1 or 2
    (what wininit reads before it starts LsaIso, and lsass before it isolates a logon's
    secrets).  [model] Newer builds also keep
    ``DeviceGuard\\Scenarios\\CredentialGuard\\Enabled``; vbs-internals §1.4 lists neither, and
    the model reads the documented LsaCfgFlags only."""
    value = query(nt, cpu, LSA_CFG_FLAGS_KEY)
    return value in (LSA_CFG_ENABLED_WITH_UEFI_LOCK, LSA_CFG_ENABLED_WITHOUT_LOCK)


def set_value(nt: NtKernel, cpu: Cpu, key: str, value: int) -> bool:
    """CmSetValueKey: write (or create) the cell; False when the key is too long or the hive
    page is full."""
    return _store(_CpuMem(cpu), nt.hive_va, key, value)


# -- the loader and host tools --------------------------------------------------------------
class _Ram(Protocol):
    def read(self, gpa: int, length: int) -> bytes: ...
    def write(self, gpa: int, data: bytes) -> object: ...


def load_hive(ram: _Ram, gpa: int, values: dict[str, int]) -> None:
    """winload: the SYSTEM hive from disk into its page (GPA)."""
    for key, value in values.items():
        _store(ram, gpa, key, value)


def host_values(ram: _Ram, gpa: int) -> dict[str, int]:
    """Every value of the hive page at ``gpa`` (a debugger's ``!reg``)."""
    out: dict[str, int] = {}
    page = ram.read(gpa, PAGE_SIZE)
    for index in range(CELLS):
        cell = page[index * CELL_SIZE : (index + 1) * CELL_SIZE]
        length = int.from_bytes(cell[:2], "little")
        if length:
            name = cell[NAME_AT : NAME_AT + length].decode("utf-8", "replace")
            out[name] = int.from_bytes(cell[DATA_AT : DATA_AT + 8], "little")
    return out
