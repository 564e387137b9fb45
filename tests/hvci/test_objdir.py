"""The ``\\Driver`` object directory in RAM (issue 10): how NtDeviceIoControlFile and unload
find a driver, so that what a kernel writer changes there changes the answer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbsim.nt import drivers, objdir
from vbsim.nt.drivers import SAMPLE_DRIVER, VULNERABLE_DRIVER, host_modules
from vbsim.nt.layouts import DRIVER_OBJECT, OBJECT_DIRECTORY_ENTRY
from vbsim.ntstatus import NtStatus

from .kit import Env, make_env


def test_the_name_hash_is_nt_s_case_insensitive_one() -> None:
    # by hand: h = 0 -> 0 + 0 + 0 + 'A' = 65; then 65 + 130 + 32 + 'B' (66) = 293
    assert objdir.name_hash("A") == objdir.name_hash("a") == 65
    assert objdir.name_hash("ab") == objdir.name_hash("AB") == 293
    assert objdir.name_hash("x" * 64) < 1 << 32  # a ULONG: wraps, never grows


def _entry(env: Env, name: str) -> tuple[int, int]:
    """(the link pointing at ``name``'s directory entry, the entry)."""
    from vbsim.nt.objdir import _walk

    return _walk(env.nt, env.vp.cpu, name)


def test_a_loaded_driver_is_named_in_the_directory_and_leaves_it_at_unload() -> None:
    env = make_env("vbs")
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS
    cpu = env.vp.cpu
    driver_object = objdir.lookup(env.nt, cpu, SAMPLE_DRIVER.upper())  # case-insensitive
    assert driver_object == env.driver(SAMPLE_DRIVER).object_va
    assert objdir.name_of(cpu, driver_object) == SAMPLE_DRIVER
    _, entry = _entry(env, SAMPLE_DRIVER)
    assert cpu.read_u32(entry + OBJECT_DIRECTORY_ENTRY.HashValue.offset) == objdir.name_hash(
        SAMPLE_DRIVER
    )
    assert drivers.unload_driver(env.nt, cpu, SAMPLE_DRIVER) == NtStatus.SUCCESS
    assert objdir.lookup(env.nt, cpu, SAMPLE_DRIVER) == 0
    assert drivers.unload_driver(env.nt, cpu, SAMPLE_DRIVER) == NtStatus.OBJECT_NAME_NOT_FOUND


def test_a_driver_unlinked_from_the_directory_gets_no_requests() -> None:
    """A kernel writer unlinks the vulnerable driver's directory entry: NtDeviceIoControlFile
    no longer finds it (OBJECT_NAME_NOT_FOUND) though its image stays on PsLoadedModuleList,
    and unload cannot name it either."""
    env = make_env("vbs")
    env.ensure_vulnerable()
    cpu = env.vp.cpu
    assert env.ioctl(VULNERABLE_DRIVER, drivers.IOCTL_READ8, drivers.ci_options_va(env.nt))[0] == 0
    link, entry = _entry(env, VULNERABLE_DRIVER)
    cpu.write_u64(link, cpu.read_u64(entry + OBJECT_DIRECTORY_ENTRY.ChainLink.offset))
    status, _ = env.ioctl(VULNERABLE_DRIVER, drivers.IOCTL_READ8, drivers.ci_options_va(env.nt))
    assert status == NtStatus.OBJECT_NAME_NOT_FOUND
    assert env.system.machine is not None
    assert VULNERABLE_DRIVER in host_modules(env.system.machine.ram, env.nt)
    assert drivers.unload_driver(env.nt, cpu, VULNERABLE_DRIVER) == NtStatus.OBJECT_NAME_NOT_FOUND


def test_an_entry_pointed_at_another_object_sends_the_requests_there() -> None:
    """The entry's Object is what the I/O manager calls: pointed at a forged DRIVER_OBJECT
    with the same name and no device-control routine, the request is refused there."""
    env = make_env("vbs")
    env.ensure_vulnerable()
    cpu = env.vp.cpu
    real = objdir.lookup(env.nt, cpu, VULNERABLE_DRIVER)
    forged, _ = env.nt.alloc_kernel_page(cpu)
    cpu.write(forged, cpu.read(real, 4096))
    name_at = forged + objdir.NAME_AT
    cpu.write_u64(forged + DRIVER_OBJECT.DriverNameBuffer.offset, name_at)
    cpu.write_u64(forged + drivers.DO_IOCONTROL, 0)
    _, entry = _entry(env, VULNERABLE_DRIVER)
    cpu.write_u64(entry + OBJECT_DIRECTORY_ENTRY.Object.offset, forged)
    status, _ = env.ioctl(VULNERABLE_DRIVER, drivers.IOCTL_READ8, drivers.ci_options_va(env.nt))
    assert status == drivers.STATUS_INVALID_DEVICE_REQUEST


_NAMES = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=12)
_OPS = st.lists(st.tuples(st.sampled_from(["insert", "remove", "lookup"]), _NAMES), max_size=30)


@pytest.fixture(scope="module")
def vbs_env() -> Env:
    return make_env("vbs")


@settings(max_examples=25, deadline=None)
@given(ops=_OPS)
def test_the_directory_behaves_as_a_case_insensitive_map(
    vbs_env: Env, ops: list[tuple[str, str]]
) -> None:
    """Inserts, removals and lookups of any names (colliding buckets included: 37 buckets,
    up to 30 names) agree with a case-insensitive dictionary."""
    nt, cpu = vbs_env.nt, vbs_env.vp.cpu
    model: dict[str, int] = {}
    made: list[int] = []
    try:
        for op, name in ops:
            key = "t-" + name.lower()
            if op == "insert" and key not in model:
                obj, _ = nt.alloc_kernel_page(cpu)
                made.append(obj)
                objdir.insert(nt, cpu, "t-" + name, obj)
                model[key] = obj
            elif op == "remove":
                assert objdir.remove(nt, cpu, "t-" + name) == (key in model)
                model.pop(key, None)
            assert objdir.lookup(nt, cpu, "T-" + name.upper()) == model.get(key, 0)
        for key, obj in model.items():
            assert objdir.lookup(nt, cpu, key) == obj
    finally:
        for key in list(model):
            objdir.remove(nt, cpu, key)
        for obj in made:
            nt.free_kernel_page(cpu, obj)
