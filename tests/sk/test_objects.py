"""The Secure Kernel's handle table and objects live in VTL1 memory, and the SK decides from them.

Each test changes bytes of an SK structure with a store through the SK's own processor (VTL1
ring 0, as SK code or a K1 attacker would) and shows that the SK's next decision follows the
bytes: the handle table (entry type, object pointer), the secure-allocation body, the SECURE_IMAGE
body's captured digests, the SKPROCESS page and the secure-thread table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from vbsim.boot.chain import System, boot
from vbsim.guest.address_space import KernelMap
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SHIFT
from vbsim.image import parse_image
from vbsim.nt import drivers
from vbsim.nt import kdp as ntkdp
from vbsim.nt.drivers import SAMPLE_DRIVER
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset
from vbsim.sk import objects
from vbsim.sk.ium import process as ium
from vbsim.sk.kernel import SecureKernel
from vbsim.sk.layouts import (
    HandleTable,
    ObjectType,
    SecureAllocation,
    SecureImage,
    SkProcess,
    ThreadTable,
    read_field,
    write_field,
)
from vbsim.sk.services.hvci import image_layout
from vbsim.sk.sscn import Service


def _boot(name: str) -> System:
    system = boot(preset(name))
    assert system.booted, system.halted
    assert system.nt is not None and system.sk is not None
    ntkdp.install(system.nt)
    return system


def _as_sk(system: System, work: Callable[[Cpu, SecureKernel], Any]) -> Any:
    """Run ``work`` in VTL1 ring 0 on the BSP (a store by SK code), and come back."""
    assert system.machine is not None and system.sk is not None
    vp = system.machine.bsp
    previous = vp.host_entry(1)
    try:
        return work(vp.cpu, system.sk)
    finally:
        vp.host_entry(previous)


def _entry(sk: SecureKernel, handle: int) -> int:
    return sk.handles_va + HandleTable.ENTRIES + objects.index_of(handle) * HandleTable.ENTRY


def _call(system: System, service: Service, *fields: int) -> tuple[int, list[int]]:
    assert system.nt is not None and system.nt.vsl is not None and system.machine is not None
    return system.nt.vsl.call(system.machine.bsp.cpu, service, *fields)


def _fill(system: System, handle: int, data: bytes) -> int:
    assert system.nt is not None and system.machine is not None
    return ntkdp.fill_secure_allocation(system.nt, system.machine.bsp.cpu, handle, 0, data)


@pytest.fixture(scope="module")
def allocations() -> tuple[System, int, int]:
    system = _boot("vbs")
    assert system.nt is not None and system.machine is not None
    cpu = system.machine.bsp.cpu
    first = ntkdp.create_secure_allocation(system.nt, cpu, 64)
    second = ntkdp.create_secure_allocation(system.nt, cpu, 64)
    assert first[0] == second[0] == NtStatus.SUCCESS
    return system, first[1], second[1]


def test_the_sk_keeps_only_a_symbol_map_of_its_address_space() -> None:
    system = _boot("vbs")
    assert system.sk is not None and system.sk_space is not None
    assert type(system.sk.space) is KernelMap  # root, routines, code pages: no RAM
    assert system.sk.space.root == system.sk_space.pt.root
    assert system.sk.loader is None  # the loader's block (and its KernelSpace) was dropped


def test_handles_are_entry_indices_times_four_and_entries_name_type_and_object(
    allocations: tuple[System, int, int],
) -> None:
    system, first, second = allocations
    assert system.sk is not None and system.machine is not None
    for handle in (first, second):
        assert (handle - HandleTable.FIRST_HANDLE) % 4 == 0 and handle > HandleTable.FIRST_HANDLE
    assert second == first + 4  # the next free entry
    table = objects.host_entries(system.machine.ram.read, system.sk)
    kind, body = table[first]
    assert kind == ObjectType.SECURE_ALLOCATION and objects.is_block(system.sk, body)
    va, size = _as_sk(
        system,
        lambda cpu, sk: (
            read_field(cpu, body, SecureAllocation.VA),
            read_field(cpu, body, SecureAllocation.SIZE),
        ),
    )
    assert size == 64 and va != 0


def test_a_store_to_the_entry_type_makes_the_next_lookup_a_type_mismatch(
    allocations: tuple[System, int, int],
) -> None:
    system, first, _ = allocations
    assert _fill(system, first, b"A" * 16) == NtStatus.SUCCESS

    def retype(cpu: Cpu, sk: SecureKernel, kind: int) -> None:
        cpu.write_u32(_entry(sk, first) + HandleTable.TYPE.offset, kind)

    _as_sk(system, lambda cpu, sk: retype(cpu, sk, ObjectType.SECURE_POOL))
    try:
        assert _fill(system, first, b"B" * 16) == NtStatus.OBJECT_TYPE_MISMATCH
        _as_sk(system, lambda cpu, sk: retype(cpu, sk, ObjectType.NONE))
        assert _fill(system, first, b"B" * 16) == NtStatus.INVALID_HANDLE
    finally:
        _as_sk(system, lambda cpu, sk: retype(cpu, sk, ObjectType.SECURE_ALLOCATION))
    assert _fill(system, first, b"C" * 16) == NtStatus.SUCCESS


def test_a_store_to_the_object_pointer_redirects_the_fill(
    allocations: tuple[System, int, int],
) -> None:
    system, first, second = allocations

    def buffer(cpu: Cpu, sk: SecureKernel, handle: int) -> bytes:
        body = cpu.read_u64(_entry(sk, handle) + HandleTable.OBJECT.offset)
        return cpu.read(read_field(cpu, body, SecureAllocation.VA), 16)

    def point(cpu: Cpu, sk: SecureKernel, at: int) -> int:
        slot = _entry(sk, first) + HandleTable.OBJECT.offset
        old = cpu.read_u64(slot)
        cpu.write_u64(slot, cpu.read_u64(_entry(sk, at) + HandleTable.OBJECT.offset))
        return old

    original = _as_sk(system, lambda cpu, sk: point(cpu, sk, second))
    try:
        assert _fill(system, first, b"R" * 16) == NtStatus.SUCCESS
    finally:
        _as_sk(system, lambda cpu, sk: cpu.write_u64(_entry(sk, first), original))
    assert _as_sk(system, lambda cpu, sk: buffer(cpu, sk, second)) == b"R" * 16
    assert _as_sk(system, lambda cpu, sk: buffer(cpu, sk, first)) != b"R" * 16


def test_the_allocation_size_the_fill_is_bounded_by_is_the_bodys(
    allocations: tuple[System, int, int],
) -> None:
    system, _, second = allocations

    def size(cpu: Cpu, sk: SecureKernel, value: int) -> None:
        body = cpu.read_u64(_entry(sk, second) + HandleTable.OBJECT.offset)
        write_field(cpu, body, SecureAllocation.SIZE, value)

    assert _fill(system, second, b"x" * 64) == NtStatus.SUCCESS
    _as_sk(system, lambda cpu, sk: size(cpu, sk, 32))
    try:
        assert _fill(system, second, b"x" * 64) == NtStatus.INVALID_PARAMETER  # ByteCount > size
    finally:
        _as_sk(system, lambda cpu, sk: size(cpu, sk, 64))


def test_the_captured_digest_in_the_secure_image_body_decides_the_page_hash() -> None:
    """FINISH compares each mapped code page with the SHA-256 the SECURE_IMAGE body holds: with
    one digest changed in VTL1 memory, the genuine pages no longer match."""
    system = _boot("vbs-hvci")
    assert system.nt is not None and system.machine is not None
    nt, cpu = system.nt, system.machine.bsp.cpu
    image = nt.driver_store[SAMPLE_DRIVER]
    status, handle = drivers._create_secure_image(nt, cpu, image)
    assert status == NtStatus.SUCCESS
    parsed = parse_image(image)
    layout = image_layout(image, parsed)
    assert layout is not None
    driver = drivers.map_image(nt, cpu, SAMPLE_DRIVER, parsed, layout)
    code_index = min(layout.code)

    def corrupt(cpu: Cpu, sk: SecureKernel) -> None:
        body = cpu.read_u64(_entry(sk, handle) + HandleTable.OBJECT.offset)
        assert read_field(cpu, body, SecureImage.STAGE) == SecureImage.CREATED
        frame = cpu.read_u64(body + SecureImage.DIGEST_FRAME)
        slot = sk.space.phys_va(frame << PAGE_SHIFT) + code_index * SecureImage.DIGEST
        assert cpu.read(slot, 32) == hashlib.sha256(layout.pages[code_index]).digest()
        cpu.write(slot, hashlib.sha256(b"not the signed page").digest())

    _as_sk(system, corrupt)
    assert drivers._validate_mapped(nt, cpu, driver, handle) == NtStatus.INVALID_IMAGE_HASH
    assert system.sk is not None
    assert handle not in objects.host_entries(system.machine.ram.read, system.sk)  # NT closed it


@pytest.fixture(scope="module")
def trustlet() -> tuple[System, int, int]:
    """A VBS machine with Credential Guard's LsaIso: its secure handle and a thread cookie."""
    system = _boot("vbs")
    assert system.sk is not None and system.machine is not None
    handles = system.sk.host_processes(system.machine.ram)
    assert handles
    handle = next(iter(handles))
    status, out = _call(system, Service.CREATE_THREAD, handle)
    assert status == NtStatus.SUCCESS and out[0] >= ThreadTable.FIRST_COOKIE
    return system, handle, out[0]


def test_is_trustlet_running_reads_the_trustlet_id_from_the_skprocess(
    trustlet: tuple[System, int, int],
) -> None:
    system, handle, _ = trustlet
    assert system.sk is not None and system.machine is not None
    process = system.sk.host_processes(system.machine.ram)[handle]
    tid = process.host_trustlet_id(system.machine.ram)
    assert _call(system, Service.IS_TRUSTLET_RUNNING, tid)[1][0] == 1
    assert _call(system, Service.IS_TRUSTLET_RUNNING, 77)[1][0] == 0

    def set_id(value: int) -> Callable[[Cpu, SecureKernel], None]:
        return lambda cpu, sk: write_field(cpu, process.object_va, SkProcess.TRUSTLET_ID, value)

    _as_sk(system, set_id(77))
    try:
        assert _call(system, Service.IS_TRUSTLET_RUNNING, 77)[1][0] == 1
        assert _call(system, Service.IS_TRUSTLET_RUNNING, tid)[1][0] == 0
    finally:
        _as_sk(system, set_id(tid))


def test_the_terminated_field_and_the_thread_table_decide_thread_calls(
    trustlet: tuple[System, int, int],
) -> None:
    system, handle, cookie = trustlet
    assert system.sk is not None and system.machine is not None
    process = system.sk.host_processes(system.machine.ram)[handle]

    def terminate(value: int) -> Callable[[Cpu, SecureKernel], None]:
        return lambda cpu, sk: write_field(cpu, process.object_va, SkProcess.TERMINATED, value)

    _as_sk(system, terminate(1))
    try:
        assert _call(system, Service.CREATE_THREAD, handle)[0] == NtStatus.INVALID_HANDLE
    finally:
        _as_sk(system, terminate(0))
    # The thread table names the thread object: with the entry gone, the cookie names nothing.
    entry = ThreadTable.ENTRIES + (cookie - ThreadTable.FIRST_COOKIE) * ThreadTable.ENTRY

    def swap(cpu: Cpu, sk: SecureKernel, value: int) -> int:
        old = cpu.read_u64(sk.threads_va + entry)
        cpu.write_u64(sk.threads_va + entry, value)
        return old

    thread = _as_sk(system, lambda cpu, sk: swap(cpu, sk, 0))
    try:
        assert _as_sk(system, lambda cpu, sk: ium.thread_object(sk, cpu, cookie)) == 0
        assert _call(system, Service.GET_CONTEXT, cookie)[0] == NtStatus.INVALID_HANDLE
    finally:
        _as_sk(system, lambda cpu, sk: swap(cpu, sk, thread))
    assert _as_sk(system, lambda cpu, sk: ium.thread_object(sk, cpu, cookie)) == thread


def test_an_entry_forged_above_the_high_water_mark_is_no_handle() -> None:
    """ExpLookupHandleTableEntry finds nothing at or above NextHandleNeedingPool: a valid-looking
    entry written past the table's high-water mark resolves to STATUS_INVALID_HANDLE until the
    mark is moved over it (and then it does: the decision is the bytes)."""
    system = _boot("vbs")
    assert system.nt is not None and system.machine is not None
    first = ntkdp.create_secure_allocation(system.nt, system.machine.bsp.cpu, 64)[1]
    forged = first + 4 * 10

    def forge(cpu: Cpu, sk: SecureKernel) -> int:
        source = _entry(sk, first)
        cpu.write(_entry(sk, forged), cpu.read(source, HandleTable.ENTRY))
        return read_field(cpu, sk.handles_va, HandleTable.HIGH_WATER)

    high = _as_sk(system, forge)
    assert high == objects.index_of(first) + 1
    assert _fill(system, forged, b"A" * 16) == NtStatus.INVALID_HANDLE
    _as_sk(
        system,
        lambda cpu, sk: write_field(
            cpu, sk.handles_va, HandleTable.HIGH_WATER, objects.index_of(forged) + 1
        ),
    )
    assert _fill(system, forged, b"A" * 16) == NtStatus.SUCCESS
