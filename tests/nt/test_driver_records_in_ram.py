"""What NT knows about a loaded driver is in RAM: the loader entry behind DriverSection, the
secure-image handle in the image's section record, and the frames its kernel PTEs map.  A
write to each changes NT's next decision about the driver."""

from __future__ import annotations

from tests.hvci.kit import Env, make_env

from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.nt import drivers
from vbsim.nt.drivers import SAMPLE_DRIVER
from vbsim.nt.layouts import (
    DRIVER_OBJECT,
    IMAGE_SECTION,
    KLDR_DATA_TABLE_ENTRY,
    SE_CI_CALLBACKS,
    HostReader,
)
from vbsim.ntstatus import NtStatus


def _reader(env: Env) -> HostReader:
    assert env.system.machine is not None
    return HostReader(env.system.machine.ram, DIRECT_MAP)


def test_the_view_is_read_from_the_driver_object_loader_entry_and_ptes() -> None:
    env = make_env("vbs-hvci")
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS
    driver = env.driver(SAMPLE_DRIVER)
    reader = _reader(env)
    entry = reader.field(driver.object_va, DRIVER_OBJECT.DriverSection)
    assert entry == driver.section
    assert reader.field(entry, KLDR_DATA_TABLE_ENTRY.DllBase) == driver.base
    record = reader.field(entry, KLDR_DATA_TABLE_ENTRY.SectionPointer)
    assert reader.field(record, IMAGE_SECTION.SecureImageHandle) == driver.secure_handle != 0
    # Every frame is one the kernel PTEs map, code frames executable, the rest NX.
    size = reader.field(entry, KLDR_DATA_TABLE_ENTRY.SizeOfImage)
    assert len(driver.pfns) == size // 4096 and driver.code_pfns
    assert set(driver.code_pfns) | set(driver.data_pfns) == set(driver.pfns)


def test_without_hvci_there_is_no_secure_image_handle() -> None:
    env = make_env("vbs")
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS
    assert env.driver(SAMPLE_DRIVER).secure_handle == 0


def test_unload_passes_the_handle_ram_holds_to_the_secure_kernel() -> None:
    """A write to the section record's handle is what NT hands the SK at unload: a handle the
    SK never issued is refused, so NT keeps (leaks) the frames the SK still protects."""
    env = make_env("vbs-hvci")
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS
    driver = env.driver(SAMPLE_DRIVER)
    reader = _reader(env)
    record = reader.field(driver.section, KLDR_DATA_TABLE_ENTRY.SectionPointer)
    reader.set_field(record, IMAGE_SECTION.SecureImageHandle, driver.secure_handle ^ 0x5A5A)
    status = drivers.unload_driver(env.nt, env.vp.cpu, SAMPLE_DRIVER)
    assert status != NtStatus.SUCCESS
    assert env.events("driver", "driver-unload")[-1].outcome == "pages-leaked"
    # The SK's image is untouched: its code pages keep their validated rights.
    assert all(env.rights(pfn) != 0xF for pfn in driver.code_pfns)


def test_unload_frees_exactly_the_frames_the_ptes_map() -> None:
    env = make_env("vbs")
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS
    driver = env.driver(SAMPLE_DRIVER)
    assert drivers.unload_driver(env.nt, env.vp.cpu, SAMPLE_DRIVER) == NtStatus.SUCCESS
    assert env.find_driver(SAMPLE_DRIVER) is None
    # NT's next allocations take the freed frames back from its free list in RAM.
    again = {env.nt.alloc_page(env.vp.cpu) for _ in range(len(driver.pfns) + 4)}
    assert set(driver.pfns) <= again


CI_CALLS: list[tuple[int, bytes]] = []


@guest_code("tests.nt.ci_spy")
def _ci_spy(cpu: Cpu, name_va: int, name_length: int) -> int:
    """A routine behind SeCiCallbacks that records what NT handed it, then lets CI decide."""
    CI_CALLS.append((name_va, cpu.read(name_va, name_length)))
    result: int = cpu.call(env_ci[0], name_va, name_length)
    return result


env_ci: list[int] = []


def test_code_integrity_gets_the_image_name_in_pool_memory() -> None:
    """SeValidateImageHeader hands ci.dll a pool buffer naming the file (address, length:
    register values), not a Python object; CI reads the file from the disk and decides."""
    env = make_env("vbs-off")
    nt = env.nt
    assert env.system.nt_space is not None and env.system.machine is not None
    slot = drivers.se_ci_callbacks_va(nt) + SE_CI_CALLBACKS.CiValidateImageHeader.offset
    env_ci[:] = [nt.ci_validate_image_header]
    spy = env.system.nt_space.install("tests.nt.ci_spy")
    gpa = env.system.nt_space.lookup_gpa(slot)
    env.system.machine.ram.write(gpa, spy.to_bytes(8, "little"))
    CI_CALLS.clear()
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS
    assert env.load(drivers.UNSIGNED_DRIVER) == NtStatus.INVALID_IMAGE_HASH
    assert [raw for _, raw in CI_CALLS] == [
        SAMPLE_DRIVER.encode(),
        drivers.UNSIGNED_DRIVER.encode(),
    ]
    assert all(va >= DIRECT_MAP for va, _ in CI_CALLS)  # a pool page (freed afterwards)
