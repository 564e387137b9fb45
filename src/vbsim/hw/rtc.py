"""The platform's real-time clock: an MC146818-compatible CMOS RTC behind I/O ports 0x70/0x71.

Software selects a register by writing its index to port 0x70 (bit 7 of that write is the NMI
mask, not part of the index) and reads or writes it through port 0x71 (the PC/AT CMOS
interface; register map of the MC146818A data sheet, Motorola; the century register 0x32 is
the one ACPI's FADT ``CENTURY`` field names by convention).  The time registers hold BCD
digits and the hour is 24-hour, as status register B says (bit 2 clear: BCD; bit 1 set:
24-hour).  Status register A's update-in-progress bit (7) reads 0.

[model] The clock does not tick: it keeps the time it was set to (at power-on, the platform's
wall clock; after a guest write, that value), which is all a boot reads it for.
"""

from __future__ import annotations

import datetime as dt

#: The I/O ports: the index (address) register and the data register.
INDEX_PORT = 0x70
DATA_PORT = 0x71
#: Register indices (MC146818A data sheet; 0x32: the century register by ACPI convention).
SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR = 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09
STATUS_A, STATUS_B, CENTURY = 0x0A, 0x0B, 0x32
#: Status B: 24-hour mode (bit 1), BCD data (bit 2 clear).
STATUS_B_24H = 0x02
_NMI_MASK = 0x80
_REGISTERS = 128


def _bcd(value: int) -> int:
    return (value // 10) << 4 | value % 10


class CmosRtc:
    """The CMOS RTC as a port device (``vbsim.hw.bus.PortDevice``)."""

    def __init__(self, when: dt.datetime) -> None:
        self.registers = bytearray(_REGISTERS)
        self.index = 0
        self.registers[STATUS_B] = STATUS_B_24H
        self.set(when)

    def set(self, when: dt.datetime) -> None:
        """Set the clock (the platform's firmware setup, or a test)."""
        utc = when.astimezone(dt.UTC) if when.tzinfo else when
        for register, value in (
            (SECONDS, utc.second),
            (MINUTES, utc.minute),
            (HOURS, utc.hour),
            (WEEKDAY, utc.isoweekday() % 7 + 1),  # 1 = Sunday
            (DAY, utc.day),
            (MONTH, utc.month),
            (YEAR, utc.year % 100),
            (CENTURY, utc.year // 100),
        ):
            self.registers[register] = _bcd(value)

    def port_read(self, port: int, size: int) -> int:
        if port == DATA_PORT:
            return self.registers[self.index]
        return 0xFF  # the index register is write-only on the PC/AT

    def port_write(self, port: int, size: int, value: int) -> None:
        if port == INDEX_PORT:
            self.index = value & ~_NMI_MASK & (_REGISTERS - 1)
        elif self.index not in (STATUS_A,):  # UIP and the divider are the chip's
            self.registers[self.index] = value & 0xFF
