"""The platform's random-number source (vbsim.hw.entropy): RDRAND on every CPL, one stream per
machine, and a seeded configuration that reproduces a boot's keys and the monitor's canaries."""

from __future__ import annotations

import pytest

from vbsim.boot.chain import boot
from vbsim.hw.entropy import Entropy
from vbsim.invariants.monitor import Monitor
from vbsim.invariants.skstate import host_gpa
from vbsim.machine import Machine
from vbsim.policy import PolicyError, from_dict, preset


def test_a_seeded_stream_reproduces_and_seeds_differ() -> None:
    one, two, other = Entropy(5), Entropy(5), Entropy(6)
    assert one.read(3) + one.read(40) == two.read(43)
    assert one.u64() == two.u64()
    assert Entropy(5).read(64) != other.read(64)
    assert Entropy(5).derive("x") == Entropy(5).derive("x") != Entropy(5).derive("y")


def test_an_unseeded_stream_is_drawn_from_the_host() -> None:
    assert Entropy().read(32) != Entropy().read(32)


def test_rdrand_is_one_generator_for_the_package_and_works_at_cpl3() -> None:
    machine = Machine(ram_size=16 << 20, vps=2, entropy_seed=11)
    reference = Entropy(11)
    first = machine.vps[0].cpu.rdrand()
    machine.vps[1].set_cpl(3)
    second = machine.vps[1].cpu.rdrand()
    assert (first, second) == (reference.u64(), reference.u64())
    machine.close()


def _secrets(seed: int | None) -> tuple[bytes, bytes, list[bytes]]:
    system = boot(preset("vbs").with_changes(entropy_seed=seed))
    assert system.machine is not None and system.sk is not None
    ram, sk = system.machine.ram, system.sk
    keys = host_gpa(ram, sk, sk.keys_va)
    dump = host_gpa(ram, sk, sk.dump_key_va)
    assert keys is not None and dump is not None
    monitor = Monitor.attach(system)
    canaries = [item.data for item in monitor.secrets.items if item.canary]
    result = ram.read(keys, 96), ram.read(dump, 40), canaries
    system.machine.close()
    return result


def test_a_seeded_policy_boots_the_same_keys_and_canaries() -> None:
    first, again, unseeded = _secrets(42), _secrets(42), _secrets(None)
    assert first == again
    assert first[0] != unseeded[0] and first[1] != unseeded[1]
    assert first[2] and first[2] != unseeded[2]
    assert _secrets(43)[0] != first[0]


@pytest.mark.parametrize("value", [-1, 1 << 128, True, "7", 1.5])
def test_policy_rejects_a_bad_entropy_seed(value: object) -> None:
    with pytest.raises(PolicyError, match="entropy_seed"):
        from_dict({"preset": "vbs", "entropy_seed": value})


def test_policy_accepts_an_entropy_seed() -> None:
    assert from_dict({"preset": "vbs", "entropy_seed": 9}).entropy_seed == 9
