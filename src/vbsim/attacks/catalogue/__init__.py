"""Every scenario of the catalogue, in catalogue order."""

from __future__ import annotations

import importlib
import pkgutil

from vbsim.attacks.model import Scenario


def _load() -> list[Scenario]:
    found: list[Scenario] = []
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        found.extend(getattr(loaded, "SCENARIOS", ()))
    return found


SCENARIOS: list[Scenario] = _load()


def by_id(scenario_id: str) -> Scenario | None:
    wanted = scenario_id.lower()
    return next((s for s in SCENARIOS if s.id.lower() == wanted), None)
