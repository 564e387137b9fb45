"""SECURE_CALL_ARGS in RBX/XMM10-15: the int transfer (callargs.load / capture) is the 0x68-byte
layout of vbs-internals §2.2 (``pack`` + ``to_registers``, ``from_registers`` + ``unpack``), for
any block a caller builds and any register contents a caller leaves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from hypothesis import given
from hypothesis import strategies as st

from vbsim.hw.cpu import Cpu
from vbsim.sk import callargs
from vbsim.sk.callargs import FIELDS, SecureCallArgs


@dataclass
class _Registers:
    """The shared registers the transfer uses (what a Cpu offers for them)."""

    rbx: int = 0
    xmm: list[int] = field(default_factory=lambda: [0] * 16)

    @property
    def cpu(self) -> Cpu:
        return cast(Cpu, self)


_U64 = st.integers(0, (1 << 64) - 1)
_BLOCKS = st.builds(
    SecureCallArgs,
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF_FFFF),
    st.lists(_U64, max_size=FIELDS + 2),
)


@given(_BLOCKS)
def test_load_puts_the_packed_block_in_the_registers(block: SecureCallArgs) -> None:
    by_bytes, by_ints = _Registers(), _Registers()
    callargs.to_registers(by_bytes.cpu, block.pack())
    callargs.load(by_ints.cpu, block)
    assert (by_ints.rbx, by_ints.xmm) == (by_bytes.rbx, by_bytes.xmm)


@given(_U64, st.lists(st.integers(0, (1 << 128) - 1), min_size=16, max_size=16))
def test_capture_reads_the_block_the_registers_hold(rbx: int, xmm: list[int]) -> None:
    registers = _Registers(rbx, xmm)
    expected = SecureCallArgs.unpack(callargs.from_registers(registers.cpu))
    assert callargs.capture(registers.cpu) == expected


def test_capture_is_a_copy() -> None:
    """Registers written after the capture do not change it (VTL0 cannot race the SK)."""
    registers = _Registers(2 | 7 << 16, [0] * 10 + [5, 0, 0, 0, 0, 0])
    captured = callargs.capture(registers.cpu)
    registers.rbx, registers.xmm[10] = 0, 9
    assert (captured.op, captured.code, captured.fields[0]) == (2, 7, 5)
