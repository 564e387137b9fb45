"""Run conformance cases and render their pass/fail table (at most 100 columns)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass

from vbsim.conformance.cases import CASES, Case, CaseFailure

PASS, FAIL, ERROR = "pass", "fail", "error"
WIDTH = 100


@dataclass(frozen=True, slots=True)
class Result:
    case: Case
    outcome: str  # pass / fail (the model disagrees) / error (the model raised: a bug)
    detail: str
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.case.id,
            "area": self.case.area,
            "source": self.case.source,
            "outcome": self.outcome,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


def select(ids: Iterable[str] | None = None) -> list[Case]:
    if ids is None:
        return list(CASES)
    wanted = list(ids)
    known = {c.id: c for c in CASES}
    missing = [i for i in wanted if i not in known]
    if missing:
        raise KeyError(f"unknown conformance case(s): {', '.join(missing)}")
    return [known[i] for i in wanted]


def run_case(case: Case) -> Result:
    start = time.perf_counter()
    try:
        case.run()
    except CaseFailure as failure:
        return Result(case, FAIL, str(failure), time.perf_counter() - start)
    except Exception as error:  # a Python exception escaping the model is a bug: report it
        last = traceback.extract_tb(error.__traceback__)[-1]
        where = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
        detail = f"{type(error).__name__}: {error} ({where})"
        return Result(case, ERROR, detail, time.perf_counter() - start)
    return Result(case, PASS, "", time.perf_counter() - start)


def run(ids: Iterable[str] | None = None) -> list[Result]:
    return [run_case(case) for case in select(ids)]


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` columns, broken at spaces (never cut)."""
    import textwrap

    return textwrap.wrap(text, max(20, width), break_long_words=False, break_on_hyphens=False) or [
        ""
    ]


def table(results: list[Result], width: int = WIDTH) -> str:
    """One row per case: outcome, id, upstream source (and, below a failing row, what it saw)."""
    id_width = max([len("case")] + [len(r.case.id) for r in results])
    source_width = width - 6 - 2 - id_width - 2
    lines = [f"{'result':<6}  {'case':<{id_width}}  {'upstream source'}", "-" * width]
    indent = " " * (6 + 2 + id_width + 2)
    for r in results:
        first, *rest = _wrap(r.case.source, source_width)
        lines.append(f"{r.outcome.upper():<6}  {r.case.id:<{id_width}}  {first}")
        lines.extend(indent + more for more in rest)
        if r.outcome != PASS:
            lines.extend(indent + part for part in _wrap(f"→ {r.detail}", source_width))
    passed = sum(r.outcome == PASS for r in results)
    lines.append("-" * width)
    lines.append(f"{passed} passed, {len(results) - passed} failed")
    return "\n".join(lines)
