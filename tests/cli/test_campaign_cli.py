"""``vbsim soak``, ``vbsim fuzz`` and ``vbsim campaign show`` with hostile or reused results
directories, malformed campaigns, options that contradict a campaign (hostile-input audit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vbsim.cli.main import main

SMALL = ["--workers", "1", "--batch", "1", "--max-actions", "3"]


def one_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err and "internal error" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def campaign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A finished 2-program soak campaign."""
    directory = tmp_path / "soak"
    assert main(["soak", "-n", "2", *SMALL, "--out", str(directory)]) == 0
    capsys.readouterr()
    return directory


@pytest.mark.parametrize("kind", ["a file", "a device"])
def test_soak_out_that_is_not_a_directory(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "LsaIso.exe"
    target.write_bytes(b"MZ")
    out = str(target) if kind == "a file" else "/dev/full"
    assert main(["soak", "-n", "3", "--out", out]) == 2
    one_line(capsys, "is not a directory")


def test_fuzz_out_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "LsaIso.exe"
    target.write_bytes(b"MZ")
    assert main(["fuzz", "policy", "--workers", "2", "--out", str(target)]) == 2
    one_line(capsys, "is not a directory")


def test_soak_out_with_a_missing_parent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing"
    assert main(["soak", "-n", "2", "--out", str(missing / "x")]) == 2
    one_line(capsys, f"'{missing}' does not exist")
    assert not missing.exists()  # nothing created


@pytest.mark.parametrize("command", ["soak", "fuzz"])
def test_a_used_out_directory_is_refused(
    command: str, campaign: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = (campaign / "manifest.json").read_bytes()
    if command == "soak":
        argv = ["soak", "-n", "3", *SMALL, "--out", str(campaign)]
    else:
        argv = ["fuzz", "policy", "--workers", "2", "-s", "1", "--out", str(campaign)]
    assert main(argv) == 2
    line = one_line(capsys, "is not empty")
    assert ("--resume" in line) is (command == "soak")
    assert (campaign / "manifest.json").read_bytes() == manifest


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("-n", "5", "--programs 5"),
        ("--seed", "7", "--seed 7"),
        ("--max-actions", "9", "--max-actions 9"),
        ("-p", "vbs", "--preset"),
        ("--lanes", "3", "--lanes 3"),
    ],
)
def test_resume_refuses_options_that_contradict_the_campaign(
    option: str, value: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "manifest.json").write_text(
        json.dumps(
            {
                "kind": "soak",
                "seed": 0,
                "policy": {"name": "hardened"},
                "config": {
                    "programs": 4,
                    "max_actions": 3,
                    "batch": 1,
                    "capabilities": ["U0"],
                    "include_known": False,
                    "generator": "guided",
                    "lanes": 2,
                },
            }
        )
    )
    assert main(["soak", "--resume", str(directory), option, value]) == 2
    one_line(capsys, named)


def test_resuming_a_finished_campaign_says_so(
    campaign: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["soak", "--resume", str(campaign)]) == 0
    out = capsys.readouterr().out
    assert "is finished (2 of 2 programs): nothing to run" in out and "programs/s" not in out


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{}", "names no campaign kind"),
        (b'{"kind": "soak", "seed": 0, "config": {}}', "lacks policy"),
    ],
)
@pytest.mark.parametrize("command", ["show", "resume"])
def test_a_malformed_campaign_is_named(
    command: str, manifest: bytes, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "manifest.json").write_bytes(manifest)
    argv = ["campaign", "show", str(directory)]
    if command == "resume":
        argv = ["soak", "--resume", str(directory)]
    assert main(argv) == 2
    one_line(capsys, "is not a valid campaign", why)


def test_an_interrupted_campaign_shows_as_unfinished(
    campaign: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = json.loads((campaign / "manifest.json").read_text())
    manifest["config"]["programs"] = 3000  # as if Ctrl-C stopped it after 2 of 3000
    (campaign / "manifest.json").write_text(json.dumps(manifest))
    assert main(["campaign", "show", str(campaign)]) == 0
    out = capsys.readouterr().out
    assert "2 of 3000 programs (unfinished)" in out and "before the end" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--out", "somewhere"],
        ["--scheduler", "tcp://127.0.0.1:1"],
        ["--interval", "2"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_single_fuzzer_refuses_campaign_options(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fuzz", "policy", "--engine", "random", "-s", "0.1", *argv]) == 2
    one_line(capsys, argv[0], "--workers")


@pytest.mark.parametrize(
    "seconds", ["inf", "nan", "1e9", "-1", "0", "１", "1_0", "0x10", "", "1.5.2", "99999999"]
)
def test_fuzz_seconds_must_be_finite_positive_and_sane(
    seconds: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fuzz", "policy", "--seconds", seconds]) == 2
    one_line(capsys, "--seconds")


@pytest.mark.parametrize("interval", ["１", "0.1", "nan", "1e2"])
def test_fuzz_interval_is_a_plain_decimal_in_range(
    interval: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fuzz", "policy", "--workers", "2", "--interval", interval, "-s", "1"]
    assert main(argv) == 2
    one_line(capsys, "--interval")


@pytest.mark.parametrize(
    "argv",
    [
        ["fuzz", "policy", "-s", "0.2", "--engine", "random"],
        ["fuzz", "policy", "-s", "0.2"],  # auto: the random driver under --json
    ],
)
def test_fuzz_with_json_prints_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["inputs"] > 0 and data["findings"] == []


def test_fuzz_replay_with_json_prints_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "input"
    saved.write_bytes(b"MZ" + bytes(62))
    assert main(["fuzz", "image", "--replay", str(saved), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "ok": True,
        "target": "image",
        "bytes": 64,
        "finding": None,
    }


@pytest.mark.parametrize(
    "argv",
    [["boot", "--json"], ["demo"], ["matrix"], ["soak", "-n", "1"], ["trustlet", "list"]],
    ids=lambda argv: argv[0],
)
@pytest.mark.parametrize("data_dir", ["/dev/null", "/dev/null/sub"])
def test_a_bad_data_directory_is_named(
    argv: list[str],
    data_dir: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("VBSIM_DATA_DIR", data_dir)
    code = main(argv)
    if code == 0:  # a command that needs no data directory
        return
    assert code == 2
    one_line(capsys, "data directory '/dev/null", "is not a directory")


def test_a_corrupt_model_root_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vbsim.image import data_dir

    monkeypatch.setenv("VBSIM_DATA_DIR", str(tmp_path))
    assert main(["trustlet", "export", "LsaIso.exe", "-o", str(tmp_path / "l.exe")]) == 0
    roots = list(Path(data_dir()).rglob("root.pem"))
    assert roots
    roots[0].write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
    capsys.readouterr()
    assert main(["boot"]) == 2
    one_line(capsys, "data directory", "model PKI cannot be used")
