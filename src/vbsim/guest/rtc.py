"""HalQueryRealTimeClock: a kernel reads the CMOS clock through ports 0x70/0x71 (``vbsim.hw.rtc``)
and keeps the time as a FILETIME, 100-ns intervals since 1601-01-01 UTC (the unit of Windows'
KSYSTEM_TIME and KeBootTime; MS Learn "FILETIME structure").

Both kernels do this with their own processor: NT at phase 0 into ``nt!KeBootTime`` (VTL0
memory, so a K0 write moves the time NT's code integrity judges certificates at), and the
Secure Kernel at its own initialisation, before NT runs, into its state page (so what VTL0
later does to the clock or to NT's copy does not reach SKCI).  [model] Time does not advance
after boot: the system time is the boot time.
"""

from __future__ import annotations

import datetime as dt

from vbsim.hw.cpu import Cpu
from vbsim.hw.rtc import (
    CENTURY,
    DATA_PORT,
    DAY,
    HOURS,
    INDEX_PORT,
    MINUTES,
    MONTH,
    SECONDS,
    STATUS_A,
    STATUS_B,
    YEAR,
)

_UPDATE_IN_PROGRESS = 0x80
_BINARY = 0x04
_TICKS_PER_SECOND = 10_000_000
#: Days from 1601-01-01 to 1970-01-01 (the FILETIME epoch to the civil-days origin below).
_DAYS_1601_TO_1970 = 134_774
_FILETIME_EPOCH = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)


def _cmos(cpu: Cpu, register: int) -> int:
    cpu.out(INDEX_PORT, 1, register)
    return cpu.inp(DATA_PORT, 1) & 0xFF


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant, "chrono-compatible
    low-level date algorithms")."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def read_filetime(cpu: Cpu) -> int:
    """The RTC's time as a FILETIME (0 when the clock reads as no valid date: no RTC answers,
    or a register holds a value out of range)."""
    for _ in range(16):  # wait out an update in progress (the model's never is)
        if not _cmos(cpu, STATUS_A) & _UPDATE_IN_PROGRESS:
            break
    binary = bool(_cmos(cpu, STATUS_B) & _BINARY)

    def value(register: int) -> int:
        raw = _cmos(cpu, register)
        return raw if binary else (raw >> 4) * 10 + (raw & 0xF)

    second, minute, hour = value(SECONDS), value(MINUTES), value(HOURS)
    day, month = value(DAY), value(MONTH)
    year = value(CENTURY) * 100 + value(YEAR)
    if not (second < 60 and minute < 60 and hour < 24 and 1 <= day <= 31 and 1 <= month <= 12):
        return 0
    days = _days_from_civil(year, month, day) + _DAYS_1601_TO_1970
    if days < 0:
        return 0
    seconds = days * 86_400 + hour * 3600 + minute * 60 + second
    return seconds * _TICKS_PER_SECOND


def filetime_to_datetime(filetime: int) -> dt.datetime:
    """A FILETIME as an aware UTC datetime (clamped to what ``datetime`` can hold)."""
    microseconds = min(
        filetime // 10,
        (dt.datetime.max.replace(tzinfo=dt.UTC) - _FILETIME_EPOCH) // dt.timedelta(microseconds=1),
    )
    return _FILETIME_EPOCH + dt.timedelta(microseconds=microseconds)
