"""The conformance suite: every case passes against the model, each names its upstream test, a
planted behaviour change makes the matching case fail, and the CLI prints the same table."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vbsim.cli.main import app
from vbsim.conformance import runner
from vbsim.conformance.cases import CASES, Case
from vbsim.hv import dispatch, synic
from vbsim.hv.defs import HvStatus
from vbsim.hv.profile import OPENHCL

UPSTREAM = ("kvm-unit-tests", "OpenVMM", "TLFS")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_passes(case: Case) -> None:
    result = runner.run_case(case)
    assert result.outcome == runner.PASS, result.detail


def test_every_case_names_its_upstream_source() -> None:
    assert len({c.id for c in CASES}) == len(CASES)
    for case in CASES:
        assert case.source.startswith(UPSTREAM), case.id


def test_a_planted_wrong_instruction_encoding_fails_the_byte_exact_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The byte-exact message comparison catches a one-byte change in InstructionBytes."""
    monkeypatch.setattr(synic, "INSN_READ", bytes((0x48, 0x8B, 0x08)))  # mov rcx, [rax]
    result = runner.run_case(runner.select(["protect-read-message"])[0])
    assert result.outcome == runner.FAIL
    assert "64" in result.detail or "66" in result.detail  # InstructionBytes start at 0x40


def test_a_planted_privilege_table_change_fails_the_privilege_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch, "PRIVILEGE", {})
    result = runner.run_case(runner.select(["privileges"])[0])
    assert result.outcome == runner.FAIL and "ACCESS_DENIED" in result.detail


def test_the_openhcl_profile_changes_the_kvm_unit_tests_expectations() -> None:
    """Item 11: the statuses are configurable, and the cases say which source they follow."""
    from vbsim.conformance.harness import using_profile

    with using_profile(OPENHCL):
        result = runner.run_case(runner.select(["enable-partition-vtl-neg"])[0])
    assert result.outcome == runner.FAIL and HvStatus.ACCESS_DENIED.name in result.detail


def test_table_fits_100_columns_and_counts() -> None:
    results = runner.run(["initial-status", "rep-rcx-update"])
    text = runner.table(results)
    assert all(len(line) <= 100 for line in text.splitlines())
    assert text.splitlines()[-1] == "2 passed, 0 failed"
    assert "test_vsm_initial_status" in text


def test_unknown_case_is_refused() -> None:
    with pytest.raises(KeyError):
        runner.select(["no-such-case"])


def test_cli_json_and_exit_status() -> None:
    cli = CliRunner()
    out = cli.invoke(app, ["conformance", "--json", "capabilities", "translate-va"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["passed"] == 2 and data["failed"] == 0
    assert {r["id"] for r in data["results"]} == {"capabilities", "translate-va"}
    failing = cli.invoke(app, ["conformance", "--profile", "openhcl", "enable-partition-vtl-neg"])
    assert failing.exit_code == 1 and "FAIL" in failing.output
    assert cli.invoke(app, ["conformance", "nope"]).exit_code == 2
    assert cli.invoke(app, ["conformance", "--profile", "nope"]).exit_code == 2
    listed = cli.invoke(app, ["conformance", "--list"])
    assert listed.exit_code == 0 and "protect-write-message" in listed.output
