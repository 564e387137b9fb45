"""One booted machine per test module (boots cost ~0.4 s; most tests only add processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .kit import Machine, booted


@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    m = booted("vbs")
    yield m
    m.close()


@pytest.fixture
def fresh() -> Iterator[Machine]:
    """A machine of its own, for tests that end it (bugchecks) or count trustlets."""
    m = booted("vbs")
    yield m
    m.close()
