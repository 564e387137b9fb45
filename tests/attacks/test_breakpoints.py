"""The breakpoints goals read (``Trace.executions``) are the platform's, not the attacker's.

A goal such as A3-RWX's asks "did the attacker's code run in VTL0 ring 0?".  The answer comes
from the processor that fetched the routine's thunk through its translation (hw.vp ``fetch``);
code under test can neither record an execution nor make a trace event count as one, and
calling the routine's Python function is not executing it.  A one-rule audit showed both
forgeries turning A3-RWX into *succeeded* on vbs-hvci before this."""

from __future__ import annotations

from dataclasses import replace

from vbsim.attacks.catalogue import a03_a14_memory_code_dma as mcd
from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import runs
from vbsim.attacks.context import AttackContext
from vbsim.attacks.model import Outcome
from vbsim.attacks.runner import run
from vbsim.hw import code
from vbsim.hw.cpu import Cpu


def _forge(cpu: Cpu) -> int:
    """K0: claim the shellcode ran, and run its Python function without fetching it."""
    cpu.emit("breakpoint", "debugger", "hit", routine=mcd.SHELLCODE, tag="a3-rwx")
    entry = code.decode_thunk(code.encode_thunk(mcd.SHELLCODE))
    assert entry is not None
    return int(entry[1](cpu))


def test_a3_rwx_cannot_be_claimed_by_the_attackers_own_code() -> None:
    def steps(ctx: AttackContext) -> None:
        mcd.A3_RWX.steps(ctx)
        ctx.kernel(_forge)

    result, ctx = run(replace(mcd.A3_RWX, steps=steps), "vbs-hvci")
    assert runs(ctx, mcd.SHELLCODE) == []
    assert result.outcome is not Outcome.SUCCEEDED


def test_an_execution_is_recorded_with_the_mode_it_ran_in() -> None:
    result, ctx = run(mcd.A3_RWX, "vbs")
    assert result.outcome is Outcome.SUCCEEDED
    [execution] = [e for e in ctx.trace.executions if e.routine == mcd.SHELLCODE]
    assert (execution.vtl, execution.cpl) == (0, 0) and execution.va != 0


def test_breakpoint_routines_stay_off_the_fast_path() -> None:
    thunk = code.encode_thunk(mcd.SHELLCODE)
    assert code.has_breakpoint(thunk) and thunk not in code._registry
