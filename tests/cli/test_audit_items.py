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

from .conftest import one_line


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
def test_an_empty_policy_path_isone_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boot", "--policy", ""]) == 2
    out = one_line(capsys, "--policy", "empty")
    assert out == ""
    assert main(["boot", "--policy", "", "--json"]) == 2
    data = json.loads(one_line(capsys, "empty"))
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
    one_line(capsys, fragment)


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
    one_line(capsys, "--ram-mib", fragment)


# -- 4. conformance --list -------------------------------------------------------------------------
@pytest.mark.parametrize("width", [100, 80])
def test_conformance_list_fits_and_keeps_every_id(
    width: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vbsim.conformance.cases import CASES

    monkeypatch.setenv("COLUMNS", str(width))
    assert main(["conformance", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    firsts = {line.split()[0] for line in lines if line and not line.startswith(" ")}
    assert {c.id for c in CASES} <= firsts
    text = " ".join(" ".join(lines).split())
    for case in CASES:  # every source is all there, wrapped at spaces or after . and _
        assert all(word in text.replace(" ", "") for word in case.source.split())


def test_conformance_list_and_results_honour_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vbsim.conformance.cases import CASES

    assert main(["conformance", "--list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in data["cases"]] == [c.id for c in CASES]
    assert main(["conformance", "", "--json"]) == 2
    error = json.loads(one_line(capsys, "''"))
    assert error["exit_code"] == 2 and "--list" in error["error"]
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["conformance", "initial-status", "enable-vp-vtl-other-vp"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines) and "self-enable)" in "\n".join(lines)


# -- 6. lone surrogates in output -----------------------------------------------------------------
def test_the_json_encoder_never_emits_a_lone_surrogate() -> None:
    from vbsim.cli.output import json_text

    text = json_text({"file": "\udcff[b].exe", "\udcfe": ["x\ud800", Path("\udcffp")], "n": 1})
    text.encode("ascii")  # ASCII out
    data = json.loads(text)
    assert data == {"file": "\\xff[b].exe", "\\xfe": ["x\\ud800", "\\xffp"], "n": 1}
    assert "\\ud" not in text.replace("\\\\ud800", "")  # no surrogate escape left


@pytest.fixture
def odd_image(tmp_path: Path) -> Path:
    """A real trustlet image under a name that is not UTF-8 (b'\\xff[b].exe')."""
    path = tmp_path / "\udcff[b].exe"
    assert main(["trustlet", "export", "LsaIso.exe", "-o", str(path)]) == 0
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["image", "inspect", "{f}", "--json"],
        ["image", "verify", "{f}", "--json"],
        ["trustlet", "run", "{f}", "--json"],
        ["fuzz", "image", "--replay", "{f}", "--json"],
        ["trustlet", "export", "LsaIso.exe", "-o", "{d}/\udcfe.exe", "--json"],
        ["image", "sign", "{f}", "-o", "{d}/\udcfd.exe", "--json"],
        ["image", "inspect", "{d}/\udcfc-missing.exe", "--json"],
    ],
)
def test_json_output_with_a_non_utf8_file_name(
    argv: list[str], odd_image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    args = [a.replace("{f}", str(odd_image)).replace("{d}", str(odd_image.parent)) for a in argv]
    code = main(args)
    out, err = capsys.readouterr()
    assert code in (0, 2) and "Traceback" not in err, err
    out.encode("utf-8")  # strict: no lone surrogate reached stdout
    data = json.loads(out)
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(data, ensure_ascii=False))


def test_text_output_with_a_non_utf8_file_name(
    odd_image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["image", "inspect", str(odd_image)]) == 0
    out = capsys.readouterr().out
    out.encode("utf-8")
    assert "\\xff[b].exe" in out
    assert main(["image", "sign", str(odd_image), "-o", str(odd_image.parent / "\udcfes.exe")]) == 0
    out = capsys.readouterr().out
    out.encode("utf-8")
    assert "\\xfes.exe" in out


def test_a_policy_file_with_a_non_utf8_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "\udcffp.toml"
    path.write_text('preset = "vbs"\nvps = 3\n')
    assert main(["boot", "--policy", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    out.encode("utf-8")
    assert json.loads(out)["policy"]["name"] == "custom policy (from \\xffp.toml), based on vbs"


# -- 7. tables below 80 columns -------------------------------------------------------------------
NARROW = [
    (["boot", "--preset", "hardened"], ["0x000000000-0x000000fff", "securekernel.pool"]),
    (["trustlet", "list"], ["10.0.26100.2314", "PARENT_SD=S-1-5-83-0", "lsaiso.main"]),
    (["matrix"], ["paging.us"]),
    (["machine", "--ram", "64M"], ["0xfffff80000000040", "enable-partition-vtl"]),
    (["attack", "A9", "--trace"], ["securecall.allocation", "0xfffff800000002e0"]),
    (["trustlet", "run", "LsaIso.exe"], ["STATUS_ACCESS_VIOLATION", "SecureThreadCookie"]),
]


@pytest.mark.parametrize("width", [60, 40])
@pytest.mark.parametrize(("argv", "whole"), NARROW, ids=lambda a: " ".join(a)[:20])
def test_narrow_tables_do_not_crash_or_cut(
    argv: list[str],
    whole: list[str],
    width: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    assert main(argv) in (0, 1)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "…" not in out
    for word in whole:  # on one line: not cut, not folded
        assert any(word in line for line in out.splitlines()), word


def test_a_table_that_cannot_fit_is_printed_wider_not_cut() -> None:
    from rich.table import Table

    from vbsim.cli.render import Screen

    table = Table(title="t")
    table.add_column("id", no_wrap=True)
    table.add_column("hex")
    table.add_column("prose")
    table.add_row("SEED-K0-LSASS-CREDENTIALS", "0xfffff80000000460", "some words " * 6)
    out = io.StringIO()
    Screen(file=out, width=40, highlight=False).print(table)
    text = out.getvalue()
    assert "…" not in text
    assert any("SEED-K0-LSASS-CREDENTIALS" in line for line in text.splitlines())
    assert any("0xfffff80000000460" in line for line in text.splitlines())
    width = max(len(line) for line in text.splitlines())
    assert 40 < width <= 25 + 18 + 5 + 10 + 6  # as wide as the words need, no wider
    wide = io.StringIO()  # where it fits, rich's own layout is untouched
    same = Table(title="t")
    for column in ("id", "hex", "prose"):
        same.add_column(column)
    same.add_row("A1", "0x1", "words")
    Screen(file=wide, width=100).print(same)
    plain = io.StringIO()
    Console(file=plain, width=100).print(same)
    assert wide.getvalue() == plain.getvalue()


# -- 8. an empty output or input path --------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["report", "-o", ""],
        ["trustlet", "export", "LsaIso.exe", "-o", ""],
        ["image", "inspect", ""],
        ["image", "verify", ""],
        ["image", "sign", "x.exe", "-o", ""],
        ["campaign", "show", ""],
        ["soak", "--programs", "1", "--out", ""],
        ["soak", "--resume", ""],
        ["fuzz", "image", "--replay", ""],
        ["trustlet", "run", ""],
    ],
)
def test_an_empty_path_isone_line(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # '' used to mean this directory
    assert main(argv) == 2
    assert one_line(capsys, "empty") == ""
    assert list(tmp_path.iterdir()) == []
    assert main([*argv, "--json"]) == 2
    assert json.loads(one_line(capsys, "empty"))["exit_code"] == 2


# -- 9. long dotted names in trace details ---------------------------------------------------------
ROUTINE = "attack.a03_a14_memory_code_dma._toctou_fill"


@pytest.mark.parametrize(
    ("width", "lines"),
    [
        (60, [f"routine={ROUTINE}", "va=0xfffff80000000460"]),
        (50, ["routine=", ROUTINE, "va=0xfffff80000000460"]),
        (30, ["routine=attack.", "a03_a14_memory_code_dma.", "_toctou_fill",
              "va=0xfffff80000000460"]),
        (20, ["routine=attack.a03_", "a14_memory_code_dma.", "_toctou_fill", "va=",
              "0xfffff80000000460"]),
    ],
)  # fmt: skip
def test_long_names_break_at_dots_and_underscores(width: int, lines: list[str]) -> None:
    from vbsim.cli.render import wrap_names

    assert wrap_names(f"routine={ROUTINE} va=0xfffff80000000460", width).splitlines() == lines


@pytest.mark.parametrize("width", [60, 80, 100])
def test_a_trace_detail_with_a_long_routine_name(width: int) -> None:
    from vbsim.cli.render import Screen, trace_table
    from vbsim.trace import Trace

    trace = Trace(record=True)
    trace.emit("breakpoint", "code-execution", "entered", actor="attacker (K0)", routine=ROUTINE)
    trace.emit("hypercall", "hypercall", "success", call="MODIFY_VTL_PROTECTION_MASK", code=12)
    out = io.StringIO()
    Screen(file=out, width=width).print(trace_table(trace.events, "t", width))
    cells = [line.split("│")[-2].strip() for line in out.getvalue().splitlines() if "│" in line]
    # The name reads back whole, and every line of it ends at a '.', '_' or '=' (or the name).
    joined = "".join(cells)
    assert ROUTINE in joined and "MODIFY_VTL_PROTECTION_MASK" in joined
    for cell in cells:
        if cell and cell in ROUTINE and not ROUTINE.endswith(cell):
            assert cell[-1] in "._=", cell
    assert all(len(line) <= width for line in out.getvalue().splitlines())


# -- integer options: ASCII digits only, ranges enforced (Typer's int takes '１' and '1_0') -------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["soak", "-n", "１０"], "is not a whole number"),
        (["soak", "-n", "1_0"], "is not a whole number"),
        (["soak", "-n", "0"], "below the minimum, 1"),
        (["soak", "--workers", "65"], "above the maximum, 64"),
        (["soak", "--seed", "９"], "is not a whole number"),
        (["fuzz", "policy", "--seed", "1e3"], "is not a whole number"),
        (["machine", "--vps", "65"], "above the maximum, 64"),
        (["bench", "--repeat", "1" + "0" * 40], "too many digits"),
    ],
)
def test_integer_options_take_ascii_digits_in_range(args: list[str], needle: str) -> None:
    from typer.testing import CliRunner

    from vbsim.cli.main import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
