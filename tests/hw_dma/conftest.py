"""Fixtures for the DMA / IOMMU tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .rig import Rig, make_rig


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = make_rig()
    yield r
    r.machine.close()
