"""``vbsim boot``: each step names its component, no Secure Boot claim with Secure Boot off,
nothing cut at 80 or 100 columns, addresses in hex."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from vbsim.boot.report import LOADER_CHECK, boot_report, print_boot_report
from vbsim.cli.main import main
from vbsim.policy import load, preset
from vbsim.report.data import collect
from vbsim.report.draw import boot_svg
from vbsim.report.svg import render


def _screen(report: dict[str, object], width: int) -> str:
    out = io.StringIO()
    print_boot_report(report, Console(file=out, width=width, highlight=False))
    return out.getvalue()


@pytest.fixture(scope="module")
def secure_boot_off(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "sb-off.toml"
    path.write_text('preset = "vbs"\nsecure_boot = false\n')
    return path


def test_without_secure_boot_no_step_claims_secure_boot(
    secure_boot_off: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["boot", "--policy", str(secure_boot_off), "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)["chain"]
    checks = [s for s in chain if s["step"] == "secureboot"]  # the trace's own name stays
    assert [s["label"] for s in checks] == [
        f"{LOADER_CHECK} hvix64.exe",
        f"{LOADER_CHECK} ntoskrnl.exe",
        f"{LOADER_CHECK} securekernel.exe",
    ]
    assert not any(s["label"].startswith("secureboot") for s in chain)
    text = _screen(boot_report(load(str(secure_boot_off))), 100)
    assert "secureboot" not in text and "Secure Boot is off: nothing verified winload" in text
    # The report's boot chain says the same.
    data = collect(["vbs"], [])
    data.presets[0].policy = load(str(secure_boot_off))
    # (the chain of the Secure Boot boot, drawn under the off policy: the label follows it)
    svg = str(render(boot_svg(data.presets[0])))
    assert "secureboot" not in svg and f"{LOADER_CHECK} hvix64.exe" in svg


def test_with_secure_boot_each_check_names_its_component() -> None:
    report = boot_report(preset("vbs"))
    labels = [s["label"] for s in report["chain"] if s["step"] == "secureboot"]
    assert labels == [
        "secureboot hvix64.exe",
        "secureboot ntoskrnl.exe",
        "secureboot securekernel.exe",
    ]
    calls = [s["label"] for s in report["chain"] if s["step"] == "dispatch"]
    assert "secure call PHASE3_INIT" in calls and "secure call PROTECT_KERNEL_DATA_PAGE" in calls


@pytest.mark.parametrize("width", [80, 100, 160])
def test_boot_fits_without_cuts(width: int) -> None:
    text = _screen(boot_report(preset("hardened")), width)
    assert "…" not in text
    assert all(len(line) <= width for line in text.splitlines())
    words = text.split()
    assert "PROTECT_KERNEL_DATA_PAGE" in words  # a service name whole
    routines = [w for w in words if w.startswith("routine=")]
    assert routines and all(w.startswith("routine=0xfffff8") and len(w) == 26 for w in routines)


@pytest.mark.parametrize("svn", [-5, 99999999999999999999])
def test_a_revocation_floor_svn_is_range_checked(
    svn: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a component's svn is: 0..2**32-1 (a floor of -5 or 10**20 was accepted)."""
    policy = tmp_path / "floor.toml"
    policy.write_text(f'[revocation."securekernel.exe"]\nmin_svn = {svn}\n')
    assert main(["boot", "--policy", str(policy)]) == 2
    err = capsys.readouterr().err
    assert "revocation.securekernel.exe.min_svn" in err and "0..4294967295" in err, err
