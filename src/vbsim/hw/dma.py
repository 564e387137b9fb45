"""A DMA-capable device: a storage/NIC-like bus master programmed through port I/O.

The device holds one internal buffer (the disk sector or network packet it works on) and a small
register file a VTL0 driver programs with ``out``/``in`` at CPL0.  Writing GO to COMMAND makes the
engine move bytes between the buffer and memory *through its IOMMU layer*
(``IommuLayer(domain) over SLAT(VTL0) over RAM``, :mod:`vbsim.hw.iommu`), so the device has
exactly VTL0's rights (vsm-spec §3.5) and whatever less its IOMMU domain grants.

Register file (the model's own, no real device's; 32-bit little-endian registers at
``base + offset``, ``PORT_COUNT`` ports; any access size 1/2/4 at any offset works bytewise):

====== =========== ====== ========================================================================
Offset Name        Access Meaning
====== =========== ====== ========================================================================
0x00   ADDR_LO     RW     IOVA bits 31:0 of the transfer
0x04   ADDR_HI     RW     IOVA bits 63:32
0x08   LENGTH      RW     bytes to move: 1 … ``MAX_TRANSFER`` (1 MiB)
0x0C   DIRECTION   RW     ``DIR_TO_MEMORY`` (0: buffer → memory, a device write) or
                          ``DIR_FROM_MEMORY`` (1: memory → buffer, a device read)
0x10   COMMAND     W      ``CMD_GO`` (bit 0) starts a transfer; ``CMD_RESET`` (bit 1) clears the
                          registers (wins over GO); reads as 0
0x14   STATUS      RO     ``STATUS_IDLE`` 0, ``STATUS_DONE`` 1, ``STATUS_BLOCKED`` 2 (the IOMMU,
                          SLAT or RAM refused a page: no byte moved), ``STATUS_ERROR`` 3 (absurd
                          programming: length 0 or > 1 MiB, a transfer wrapping past 2^64, an
                          unknown direction)
0x18   DEVICE_ID   RO     the IOMMU requester ID
0x1C   XFERRED     RO     bytes moved by the last command (0 unless DONE)
====== =========== ====== ========================================================================

Transfers are synchronous (done when the ``out`` to COMMAND returns) and all-or-nothing.  Guest
input never raises a Python exception: whatever is programmed ends in a STATUS value.  Every
transfer emits one ``dma`` trace event (emitted by the IOMMU layer for attempted transfers, by
the device for malformed ones, mechanism ``dma``, outcome ``error``).

A *malicious* device (:meth:`DmaDevice.malicious`, for catalogue attack A14) is an external,
attacker-controlled bus master that needs no driver: :meth:`dma_read` and :meth:`dma_write` issue
DMA at any address directly — still through the IOMMU, which is the point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hw.bus import Bus
from vbsim.hw.iommu import IOVA_LIMIT, Iommu, IommuDevice
from vbsim.hw.x86 import Access

if TYPE_CHECKING:
    from vbsim.hw.vp import VirtualProcessor

#: Default port base of the first device (a free range in the PC's PCI I/O window).
DEFAULT_BASE = 0xC000
PORT_COUNT = 0x20
#: The largest transfer the engine accepts.
MAX_TRANSFER = 1 << 20

REG_ADDR_LO = 0x00
REG_ADDR_HI = 0x04
REG_LENGTH = 0x08
REG_DIRECTION = 0x0C
REG_COMMAND = 0x10
REG_STATUS = 0x14
REG_DEVICE_ID = 0x18
REG_XFERRED = 0x1C
#: Bytes of the register file a driver may write (STATUS, DEVICE_ID and XFERRED are read-only).
_WRITABLE_END = REG_STATUS

DIR_TO_MEMORY = 0
DIR_FROM_MEMORY = 1

CMD_GO = 1 << 0
CMD_RESET = 1 << 1

STATUS_IDLE = 0
STATUS_DONE = 1
STATUS_BLOCKED = 2
STATUS_ERROR = 3
STATUS_NAMES = {
    STATUS_IDLE: "idle",
    STATUS_DONE: "done",
    STATUS_BLOCKED: "blocked",
    STATUS_ERROR: "error",
}

_DIRECTIONS = {DIR_TO_MEMORY: Access.WRITE, DIR_FROM_MEMORY: Access.READ}


class DmaDevice:
    """A bus-master engine with one buffer, behind ``iommu``."""

    def __init__(
        self,
        name: str,
        iommu: Iommu,
        *,
        external: bool = False,
        buffer_size: int = MAX_TRANSFER,
        attacker: bool = False,
    ) -> None:
        if not 0 < buffer_size <= MAX_TRANSFER:
            raise ValueError(f"buffer size must be 1 … {MAX_TRANSFER} bytes")
        self.name = name
        self.iommu = iommu
        #: The IOMMU's record of this requester (ID, external flag, domain).
        self.requester: IommuDevice = iommu.attach(name, external)
        #: The sector / packet the device works on.
        self.buffer = bytearray(buffer_size)
        #: True for an attacker-controlled device (:meth:`malicious`).
        self.attacker = attacker
        self.base: int | None = None
        self.regs = bytearray(PORT_COUNT)
        self._set(REG_DEVICE_ID, self.requester.device_id)

    @classmethod
    def malicious(
        cls, iommu: Iommu, name: str = "rogue-thunderbolt", buffer_size: int = MAX_TRANSFER
    ) -> DmaDevice:
        """An attacker's hot-plugged device (external, needs no driver)."""
        return cls(name, iommu, external=True, buffer_size=buffer_size, attacker=True)

    @property
    def device_id(self) -> int:
        return self.requester.device_id

    @property
    def external(self) -> bool:
        return self.requester.external

    # -- wiring -------------------------------------------------------------------------------
    def claim(self, bus: Bus, base: int = DEFAULT_BASE) -> None:
        """Decode ports ``base … base + PORT_COUNT - 1`` on ``bus``."""
        bus.claim_ports(base, PORT_COUNT, self, self.name)
        self.base = base

    # -- host side: the medium ----------------------------------------------------------------
    def load(self, data: bytes, offset: int = 0) -> None:
        """Put ``data`` in the buffer (a sector read from the disk, a packet off the wire)."""
        self.buffer[offset : offset + len(data)] = data

    def contents(self, length: int, offset: int = 0) -> bytes:
        return bytes(self.buffer[offset : offset + length])

    # -- registers ----------------------------------------------------------------------------
    def register(self, offset: int) -> int:
        return int.from_bytes(self.regs[offset : offset + 4], "little")

    def _set(self, offset: int, value: int) -> None:
        self.regs[offset : offset + 4] = (value & 0xFFFF_FFFF).to_bytes(4, "little")

    @property
    def status(self) -> int:
        return self.register(REG_STATUS)

    def port_read(self, port: int, size: int) -> int:
        offset = port - self.base if self.base is not None else -1
        size = max(0, min(size, 8))
        raw = bytes(self.regs[offset : offset + size]) if 0 <= offset < PORT_COUNT else b""
        raw += b"\xff" * (size - len(raw))  # beyond the register file: floating bus
        return int.from_bytes(raw, "little")

    def port_write(self, port: int, size: int, value: int) -> None:
        offset = port - self.base if self.base is not None else -1
        size = max(0, min(size, 8))
        if not 0 <= offset < PORT_COUNT or size == 0:
            return
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        command_written = False
        for i, byte in enumerate(data):
            at = offset + i
            if at >= _WRITABLE_END:
                break  # read-only registers (and past the end): writes are ignored
            self.regs[at] = byte
            command_written |= REG_COMMAND <= at < REG_COMMAND + 4
        if command_written:
            command = self.register(REG_COMMAND)
            self._set(REG_COMMAND, 0)  # self-clearing
            self._command(command)

    def _command(self, command: int) -> None:
        if command & CMD_RESET:
            self.regs[:_WRITABLE_END] = bytes(_WRITABLE_END)
            self._set(REG_STATUS, STATUS_IDLE)
            self._set(REG_XFERRED, 0)
            return
        if command & CMD_GO:
            iova = self.register(REG_ADDR_LO) | self.register(REG_ADDR_HI) << 32
            self.transfer(iova, self.register(REG_LENGTH), self.register(REG_DIRECTION))

    # -- the engine ---------------------------------------------------------------------------
    def transfer(self, iova: int, length: int, direction: int) -> int:
        """Run one transfer; sets and returns STATUS.  Never raises on any input."""
        access = _DIRECTIONS.get(direction)
        problem = None
        if access is None:
            problem = "direction"
        elif not 0 < length <= min(MAX_TRANSFER, len(self.buffer)):
            problem = "length"
        elif iova < 0 or iova + length > IOVA_LIMIT:
            problem = "wrap"
        if problem is not None or access is None:
            return self._error(iova, length, direction, problem or "direction")
        layer = self.iommu.layer(self.requester)
        if access is Access.WRITE:
            check = layer.write_checked(iova, memoryview(self.buffer)[:length])
        else:
            check, data = layer.read_checked(iova, length)
            if check.ok:
                self.buffer[:length] = data
        status = STATUS_DONE if check.ok else STATUS_BLOCKED
        self._set(REG_STATUS, status)
        self._set(REG_XFERRED, length if check.ok else 0)
        return status

    def _error(self, iova: int, length: int, direction: int, problem: str) -> int:
        self._set(REG_STATUS, STATUS_ERROR)
        self._set(REG_XFERRED, 0)
        trace = self.iommu.trace
        if trace.on:
            trace.emit(
                "dma",
                "dma",
                "error",
                actor=self.name,
                device=self.name,
                device_id=self.device_id,
                iova=iova,
                gpa=None,
                length=length,
                direction={DIR_TO_MEMORY: "to-memory", DIR_FROM_MEMORY: "from-memory"}.get(
                    direction, f"invalid({direction})"
                ),
                reason=problem,
            )
        return STATUS_ERROR

    # -- an attacker's device: DMA without a driver -------------------------------------------
    def dma_write(self, iova: int, data: bytes) -> int:
        """Write ``data`` at ``iova`` (device → memory); returns STATUS."""
        if not 0 < len(data) <= len(self.buffer):
            return self._error(iova, len(data), DIR_TO_MEMORY, "length")
        self.buffer[: len(data)] = data
        return self.transfer(iova, len(data), DIR_TO_MEMORY)

    def dma_read(self, iova: int, length: int) -> bytes | None:
        """Read ``length`` bytes at ``iova`` (memory → device); None unless STATUS is DONE."""
        if self.transfer(iova, length, DIR_FROM_MEMORY) != STATUS_DONE:
            return None
        return bytes(self.buffer[:length])


def driver_transfer(vp: VirtualProcessor, base: int, iova: int, length: int, direction: int) -> int:
    """What a VTL0 driver does to start a transfer: program the registers with ``out`` at CPL0,
    write GO, and read STATUS back with ``in``."""
    vp.out(base + REG_ADDR_LO, 4, iova & 0xFFFF_FFFF)
    vp.out(base + REG_ADDR_HI, 4, (iova >> 32) & 0xFFFF_FFFF)
    vp.out(base + REG_LENGTH, 4, length & 0xFFFF_FFFF)
    vp.out(base + REG_DIRECTION, 4, direction & 0xFFFF_FFFF)
    vp.out(base + REG_COMMAND, 4, CMD_GO)
    return vp.inp(base + REG_STATUS, 4)
