"""A campaign's results directory: what a researcher keeps.

- ``manifest.json`` — vbsim version, git revision when known, the kind of campaign, its seed and
  config (the policy in full), the engine and worker count, start and end times;
- ``jobs.jsonl`` — one JSON line per program (soak) or per fuzz round, appended as each job
  finishes (an interrupted campaign keeps what it finished);
- ``state/`` — the guide state each finished soak job hands to the next job of its lane (so
  ``--resume`` continues exactly where it stopped);
- ``summary.json`` — the totals and the failure groups, written at the end.

Only the process driving the campaign writes here: workers send records through the engine.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import vbsim

MANIFEST = "manifest.json"
JOBS = "jobs.jsonl"
SUMMARY = "summary.json"


def default_dir(kind: str) -> Path:
    """``$VBSIM_DATA_DIR/campaigns/KIND-YYYYmmdd-HHMMSS`` (or under ``~/.local/share/vbsim``)."""
    from vbsim.image import data_dir

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S-%f")
    return Path(data_dir()) / "campaigns" / f"{kind}-{stamp}"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def git_revision() -> str | None:
    """The checkout's revision, when vbsim runs from a git work tree."""
    root = Path(vbsim.__file__).resolve().parent.parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout.strip()
    return text if out.returncode == 0 and len(text) == 40 else None


class CampaignError(ValueError):
    """A directory that is not a valid campaign; the message names it and says why."""


#: What a campaign's manifest must hold, by kind (``--resume`` and ``campaign show`` read these).
_REQUIRED = {
    "soak": ("seed", "policy", "config"),
    "fuzz": ("seed",),
}
_SOAK_CONFIG = ("programs", "max_actions", "batch", "capabilities", "include_known", "generator")


class ResultsDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self, manifest: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "state").mkdir(exist_ok=True)
        base = {"vbsim": vbsim.__version__, "git": git_revision(), "started": now()}
        self.write_manifest({**base, **manifest})

    def exists(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def invalid(self, why: str) -> CampaignError:
        return CampaignError(f"{str(self.path)!r} is not a valid campaign ({why})")

    def manifest(self) -> dict[str, Any]:
        """The manifest, checked: :class:`CampaignError` for one vbsim did not write."""
        try:
            text = (self.path / MANIFEST).read_bytes().decode("utf-8")
            data = json.loads(text)
        except OSError as error:
            raise self.invalid(f"{MANIFEST} cannot be read: {error.strerror}") from error
        except UnicodeDecodeError as error:
            raise self.invalid(f"{MANIFEST} is not UTF-8 text") from error
        except (json.JSONDecodeError, RecursionError) as error:
            raise self.invalid(f"{MANIFEST} is not JSON") from error
        if not isinstance(data, dict):
            raise self.invalid(f"{MANIFEST} is not a JSON object")
        kind = data.get("kind")
        if kind not in _REQUIRED:
            raise self.invalid(f"{MANIFEST} names no campaign kind (soak or fuzz)")
        missing = [key for key in _REQUIRED[kind] if key not in data]
        config = data.get("config", {})
        if not isinstance(config, dict):
            raise self.invalid(f"{MANIFEST}: config is not an object")
        if kind == "soak":
            missing += [f"config.{key}" for key in _SOAK_CONFIG if key not in config]
        if missing:
            raise self.invalid(f"{MANIFEST} lacks {', '.join(missing)}")
        return data

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        _write_json(self.path / MANIFEST, manifest)

    def append(self, records: list[dict[str, Any]]) -> None:
        with (self.path / JOBS).open("a", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record, sort_keys=True) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def records(self) -> Iterator[dict[str, Any]]:
        path = self.path / JOBS
        if not path.is_file():
            return
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.strip():
                    try:
                        record = json.loads(line)
                    except (json.JSONDecodeError, RecursionError):  # a line cut short
                        continue
                    if isinstance(record, dict):
                        yield record

    def save_state(self, job: int, state: bytes | None) -> None:
        if state is not None:
            target = self.path / "state" / f"job-{job}.pickle"
            temporary = target.with_suffix(".tmp")
            temporary.write_bytes(state)
            temporary.replace(target)

    def load_state(self, job: int) -> bytes | None:
        path = self.path / "state" / f"job-{job}.pickle"
        return path.read_bytes() if path.is_file() else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_json(self.path / SUMMARY, summary)

    def summary(self) -> dict[str, Any] | None:
        path = self.path / SUMMARY
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise self.invalid(f"{SUMMARY} is not JSON") from error
        if not isinstance(data, dict):
            raise self.invalid(f"{SUMMARY} is not a JSON object")
        return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    temporary.replace(path)
