"""The rest of the hostile-input and newcomer audit (issue 12): a policy file cannot pass itself
off as a preset, empty paths are refused, strict sizes, one safe JSON encoder, tables that fit
or print wider instead of cutting, long dotted names that break at their dots."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from vbsim.boot.report import boot_report, print_boot_report
from vbsim.cli.main import main
from vbsim.policy import load_file, preset, warnings


def _one_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return out


def _banner(path: Path, width: int = 100) -> list[str]:
    loaded = load_file(path)
    out = io.StringIO()
    report = boot_report(loaded.policy, loaded)
    print_boot_report(report, Console(file=out, width=width, highlight=False))
    lines = out.getvalue().splitlines()
    return lines[: lines.index(next(line for line in lines if "boot chain" in line))]


# -- 1. the banner of a policy file ---------------------------------------------------------------
def test_a_file_named_like_a_preset_is_still_custom(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('preset = "hardened"\nname = "hardened"\nhvci = false\n')
    lines = _banner(path)
    assert lines[0] == (
        "custom policy hardened (from p.toml), based on hardened: changes: hvci: true -> false"
    )
    assert preset("hardened").description not in "\n".join(lines)


def test_a_file_cannot_borrow_a_presets_description(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    text = preset("hardened").description
    path.write_text(f'preset = "vbs"\nname = "hardened"\ndescription = "{text}"\n')
    policy = load_file(path).policy
    assert policy.name == "custom policy hardened (from p.toml), based on vbs"
    assert policy.description == f"{text}; no changes"


def test_nested_differences_are_listed_field_by_field(tmp_path: Path) -> None:
    path = tmp_path / "nested.toml"
    path.write_text(
        'preset = "hardened"\n'
        '[components."securekernel.exe"]\nsvn = 3\n'
        '[revocation."LsaIso.exe"]\nmin_svn = 9\n'
        "[legacy]\nsecurecall_double_fetch = true\n"
    )
    loaded = load_file(path)
    assert loaded.changes == (
        "components.securekernel.exe.svn: 7 -> 3",
        'revocation.LsaIso.exe.min_version: "10.0.26100.2314" -> unset',
        "revocation.LsaIso.exe.min_svn: 7 -> 9",
        "legacy.securecall_double_fetch: false -> true",
    )
    lines = _banner(path, 80)
    assert lines[0] == "custom policy (from nested.toml), based on hardened: changes:"
    assert [line.strip() for line in lines[1:]] == list(loaded.changes)
    assert "{" not in "\n".join(lines)  # no dict reprs


def test_a_file_that_changes_nothing_is_its_preset(tmp_path: Path) -> None:
    path = tmp_path / "same.toml"
    path.write_text('preset = "vbs-hvci"\nhvci = true\n')
    assert load_file(path).policy == preset("vbs-hvci")
    assert _banner(path)[0].startswith("policy vbs-hvci: ")


def test_boot_json_carries_the_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.toml"
    path.write_text('preset = "vbs"\nvps = 3\n')
    assert main(["boot", "--policy", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["policy"]["name"] == "custom policy (from p.toml), based on vbs"
    assert data["changes"] == ["vps: 2 -> 3"]


# -- 2. --policy '' --------------------------------------------------------------------------------
def test_an_empty_policy_path_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boot", "--policy", ""]) == 2
    out = _one_line(capsys, "--policy", "empty")
    assert out == ""
    assert main(["boot", "--policy", "", "--json"]) == 2
    data = json.loads(_one_line(capsys, "empty"))
    assert data["ok"] is False and data["exit_code"] == 2 and "empty" in data["error"]


def test_load_refuses_an_empty_path() -> None:
    from vbsim.policy import PolicyError

    with pytest.raises(PolicyError, match="empty"):
        load_file("")


# -- 3. warnings only about what the file wrote ---------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('preset = "vbs-off"\n', []),
        ('preset = "hardened"\nvbs = false\n', []),  # hvci etc. are hardened's, not the file's
        ('preset = "vbs-off"\nhvci = true\n', ["hvci = true cannot take effect with vbs = false"]),
        (
            'preset = "vbs-off"\nhvpt = true\nhvci = false\n',
            [
                "hvpt = true cannot take effect with vbs = false",
                "hvpt = true protects HVCI's and KDP's pages; without hvci or kdp it has "
                "nothing to protect",
            ],
        ),
        ('preset = "hardened"\nhvci = false\nkdp = false\n', []),  # hvpt: the preset's
    ],
)
def test_warnings_are_about_what_the_file_sets(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = tmp_path / "w.toml"
    path.write_text(text)
    loaded = load_file(path)
    assert list(loaded.warnings) == expected
    assert boot_report(loaded.policy, loaded)["warnings"] == expected
    assert warnings(preset("vbs-off")) == []


def test_boot_prints_only_the_files_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "w.toml"
    path.write_text('preset = "hardened"\nvbs = false\n')
    assert main(["boot", "--policy", str(path)]) == 0
    assert "warning" not in capsys.readouterr().out


# -- 5. sizes --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("１２８M", "ASCII digits"),
        ("1_000M", "ASCII digits"),
        ("64 M", "ASCII digits"),
        ("1.5G", "ASCII digits"),
        ("64iB", "ASCII digits"),
        ("-1M", "negative"),
        ("+1M", "signed"),
        ("0", "zero"),
        ("0K", "zero"),
        ("", "empty"),
        ("   ", "empty"),
        ("5000", "multiple of 4K"),
        ("4K", "minimum of 1M"),
        ("100G", "maximum RAM of 64G"),
        ("1T", "maximum RAM of 64G"),
        ("1tib", "maximum RAM of 64G"),
        ("9" * 5000 + "G", "maximum RAM of 64G"),
    ],
)
def test_machine_ram_hostile(value: str, fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["machine", "--ram", value]) == 2
    _one_line(capsys, fragment)


@pytest.mark.parametrize(
    ("text", "size"),
    [("64M", 64 << 20), ("64m", 64 << 20), ("64MB", 64 << 20), ("64MiB", 64 << 20),
     ("64mib", 64 << 20), ("1G", 1 << 30), ("8192K", 8 << 20), ("1048576", 1 << 20),
     ("1048576B", 1 << 20), (" 2M ", 2 << 20), ("1T", 1 << 40)],
)  # fmt: skip
def test_sizes_that_parse(text: str, size: int) -> None:
    from vbsim.cli.sizes import parse_size

    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("1_000", "whole number"), ("１２８", "whole number"), ("-5", "negative"), ("", "empty")],
)
def test_soak_ram_mib_is_ascii_digits(
    value: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["soak", "--programs", "1", "--ram-mib", value]) == 2
    _one_line(capsys, "--ram-mib", fragment)
