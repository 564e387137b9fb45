"""Shared fixtures: a bare partition with VTL1 enabled, a way to act as a given VTL, and an
attack context booted on the ``vbs`` preset."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from vbsim.attacks.context import AttackContext
from vbsim.boot.disk import Disk
from vbsim.conformance.harness import Partition, as_vtl, partition
from vbsim.policy import preset

__all__ = ["Bare", "as_vtl", "make_bare"]


@pytest.fixture(autouse=True, scope="session")
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The model PKI is created on first use under the user's data directory; tests use their
    own, so a test run never touches (or depends on) the user's."""
    previous = os.environ.get("VBSIM_DATA_DIR")
    os.environ["VBSIM_DATA_DIR"] = str(tmp_path_factory.mktemp("vbsim-data"))
    yield
    if previous is None:
        os.environ.pop("VBSIM_DATA_DIR", None)
    else:
        os.environ["VBSIM_DATA_DIR"] = previous


#: The bare partition with VTL1 enabled: the conformance harness's (one definition for both).
Bare = Partition


def make_bare(vps: int = 1, ram: int = 64 << 20) -> Bare:
    return partition(vps=vps, vsm=True, ram=ram)


@pytest.fixture
def bare() -> Iterator[Bare]:
    env = make_bare()
    yield env
    env.machine.close()


@pytest.fixture
def ctx() -> Iterator[AttackContext]:
    """An attack context booted on ``vbs`` (its machine closed afterwards)."""
    policy = preset("vbs")
    context = AttackContext(policy, "vbs", Disk.install(policy))
    context.boot()
    yield context
    assert context.system is not None and context.system.machine is not None
    context.system.machine.close()
