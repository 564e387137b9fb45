"""Fixtures shared by the catalogue tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from vbsim.policy import PRESETS


@pytest.fixture
def preset_variant(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Register a preset derived from another one (the runner boots presets by name)."""

    def make(base: str, **changes: Any) -> str:
        name = f"{base}+test"
        monkeypatch.setitem(PRESETS, name, replace(PRESETS[base], name=name, **changes))
        return name

    yield make
