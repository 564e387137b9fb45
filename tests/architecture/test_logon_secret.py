"""The logon password is host-side data (``vbsim.boot.logon``): a catalogue step that reaches for
it is a violation of the one rule the checker reports, while the pure ``nt_owf`` stays usable.

Before the fix, ``DEFAULT_LOGON`` lived in ``vbsim.nt.lsass`` (guest code, importable by any
step), so a K0 step could write ``nt_owf(DEFAULT_LOGON.password)`` into its loot and meet every
credential goal without a byte crossing the architectural interface."""

from __future__ import annotations

from architecture import checker

CATALOGUE_A21 = checker.SRC / "vbsim/attacks/catalogue/a21_a29_credentials.py"
MODULE = "vbsim.attacks.catalogue.a21_a29_credentials"
STEP = "_pass_the_challenge"  # a step: its first parameter is the Cpu


def _planted(source: str, function: str, line: str) -> str:
    """``source`` with ``line`` inserted as the first statement of ``function``'s body."""
    lines = source.splitlines()
    start = next(i for i, text in enumerate(lines) if text.startswith(f"def {function}("))
    body = next(i for i in range(start, len(lines)) if lines[i].rstrip().endswith(":")) + 1
    return "\n".join([*lines[:body], f"    {line}", *lines[body:]])


def _found(line: str) -> list[checker.Violation]:
    source = _planted(CATALOGUE_A21.read_text(), STEP, line)
    return [v for v in checker.check_source(source, MODULE) if v.function == STEP]


def test_the_step_is_clean_as_written() -> None:
    assert STEP in checker.steps_of(CATALOGUE_A21)
    assert [v for v in checker.check_source(CATALOGUE_A21.read_text(), MODULE)] == []


def test_a_step_using_the_module_s_import_of_the_logon_is_caught() -> None:
    """The module imports DEFAULT_LOGON for its goals (host side); a step naming it is not."""
    found = _found("cpu.write(buffer, nt_owf(DEFAULT_LOGON.password))")
    assert any(v.rule == "import" and "DEFAULT_LOGON" in v.detail for v in found), found


def test_a_step_importing_the_logon_itself_is_caught() -> None:
    found = _found("from vbsim.boot.logon import DEFAULT_LOGON as logon")
    assert any(v.rule == "import" and "vbsim.boot.logon" in v.detail for v in found), found


def test_the_pure_hash_is_not_a_violation() -> None:
    """nt_owf is MD4 of UTF-16LE: a step may compute it over bytes it obtained."""
    assert _found("cpu.write(buffer, nt_owf(cpu.read(record_va, 16).hex()))") == []


def test_the_guest_kernel_module_no_longer_has_it() -> None:
    """A step importing the old name from lsass finds nothing there (an ImportError at import
    time, not a secret)."""
    from vbsim.nt import lsass

    assert not hasattr(lsass, "DEFAULT_LOGON")
    found = _found("from vbsim.nt.lsass import nt_owf as hash_of")
    assert found == []  # the pure function is importable from guest code
