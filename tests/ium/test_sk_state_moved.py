"""The Secure Kernel state issue 10 left in Python, now in VTL1 memory: each test stores bytes
of the structure through the SK's own processor (VTL1 ring 0, ``vp.host_entry(1)``) and shows the
SK's next decision follows them — the secure-storage records, the SkuSiPolicy floors, the
intercept log, the SKPROCESS page's DirectoryTableBase and frame lists, HVPT's records and HLAT
tables — and CLOSE_SECURE_HANDLE over the handle table.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest

from vbsim.boot.chain import System, boot
from vbsim.boot.trustlets import trustlet_image
from vbsim.guest.address_space import CODE_BASE, DIRECT_MAP
from vbsim.hw.cpu import Cpu
from vbsim.hw.faults import Bugcheck
from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Pte
from vbsim.image import ComponentFloor, RevocationPolicy
from vbsim.invariants import skstate
from vbsim.ium.images import LSAISO
from vbsim.ium_abi import NT_NUMBERS, SECURE_NUMBERS
from vbsim.nt import kdp as ntkdp
from vbsim.ntstatus import NtStatus
from vbsim.policy import Component, preset
from vbsim.sk import hvpt, intercepts, objects, sipolicy
from vbsim.sk.ium import process as ium
from vbsim.sk.ium import secure_syscalls
from vbsim.sk.kernel import SecureKernel
from vbsim.sk.layouts import (
    AllowList,
    HandleTable,
    InterceptLog,
    IumServiceTable,
    ObjectPool,
    ObjectType,
    SecureAllocation,
    SecureImage,
    SkProcess,
    Storage,
    read_field,
    write_field,
)
from vbsim.sk.sscn import Service

from . import kit

OLD_LSAISO = Component(version="10.0.19041.1", svn=3)


def _as_sk(system: System, work: Callable[[Cpu, SecureKernel], Any]) -> Any:
    """Run ``work`` in VTL1 ring 0 on the BSP (a store by SK code), and come back."""
    assert system.machine is not None and system.sk is not None
    vp = system.machine.bsp
    previous = vp.host_entry(1)
    try:
        return work(vp.cpu, system.sk)
    finally:
        vp.host_entry(previous)


def _call(system: System, service: Service, *fields: int) -> tuple[int, list[int]]:
    assert system.nt is not None and system.nt.vsl is not None and system.machine is not None
    return system.nt.vsl.call(system.machine.bsp.cpu, service, *fields)


def _ram(system: System) -> Any:
    assert system.machine is not None
    return system.machine.ram


# -- secure storage ------------------------------------------------------------------------------
def _store(machine: kit.Machine, process: Any, slot: int, data: bytes) -> tuple[int, int]:
    run = machine.run(process, kit.message(kit.OP_STORE, struct.pack("<I", slot) + data))
    put, get = struct.unpack("<II", run.reply)
    return put, get


def test_the_storage_records_in_memory_decide_where_an_item_lives() -> None:
    machine = kit.booted("vbs")
    system = machine.system
    sk = system.sk
    assert sk is not None
    process = machine.started(kit.test_image(2), 2)  # ID 2: secure storage by ID
    assert _store(machine, process, 7, b"first") == (NtStatus.SUCCESS, NtStatus.SUCCESS)
    ram = _ram(system)
    record = sk.storage_gpa + Storage.RECORDS
    assert int.from_bytes(ram.read(sk.storage_gpa, 4), "little") == 1
    owner, key, gpa = struct.unpack("<QQQ", ram.read(record, Storage.RECORD))
    assert (owner, key) == (2, 7) and ram.read(gpa, 13) == (5).to_bytes(8, "little") + b"first"

    # Redirect the record to another SK frame: the next put lands there, not in the old page.
    other = _as_sk(system, lambda cpu, sk: sk.alloc_frame(cpu)) << PAGE_SHIFT
    _as_sk(system, lambda cpu, sk: cpu.write_u64(sk.storage_va + Storage.RECORDS + 16, other))
    assert _store(machine, process, 7, b"second") == (NtStatus.SUCCESS, NtStatus.SUCCESS)
    assert ram.read(other + 8, 6) == b"second" and ram.read(gpa + 8, 5) == b"first"

    # A record naming another trustlet ID is not this one's: the put makes a new record.
    _as_sk(system, lambda cpu, sk: cpu.write_u64(sk.storage_va + Storage.RECORDS, 99))
    assert _store(machine, process, 7, b"third") == (NtStatus.SUCCESS, NtStatus.SUCCESS)
    assert int.from_bytes(ram.read(sk.storage_gpa, 4), "little") == 2
    owner, key, new_gpa = struct.unpack("<QQQ", ram.read(record + Storage.RECORD, Storage.RECORD))
    assert (owner, key) == (2, 7) and new_gpa not in (gpa, other)
    machine.close()


def test_the_by_id_grant_table_in_memory_decides_secure_storage() -> None:
    """vmsp (ID 2) stores by the SK's by-ID grant, not by its signed policy: clear the grant in
    SK memory and it is refused; grant ID 3 there and a test trustlet with ID 3 may store."""
    machine = kit.booted("vbs")
    system = machine.system
    process = machine.started(kit.test_image(2), 2)
    entries = AllowList.GRANT_ENTRIES
    _as_sk(system, lambda cpu, sk: cpu.write_u32(sk.allow_va + entries + 4, 0))
    assert _store(machine, process, 1, b"x")[0] == NtStatus.ACCESS_DENIED
    other = machine.started(kit.test_image(3), 3)
    assert _store(machine, other, 1, b"x")[0] == NtStatus.ACCESS_DENIED
    _as_sk(system, lambda cpu, sk: cpu.write_u32(sk.allow_va + entries, 3))
    _as_sk(system, lambda cpu, sk: cpu.write_u32(sk.allow_va + entries + 4, 2))
    assert _store(machine, other, 1, b"x") == (NtStatus.SUCCESS, NtStatus.SUCCESS)
    machine.close()


def test_the_ium_service_tables_in_memory_decide_dispatch() -> None:
    """A K1 write to the secure-service table's IumGetIdk entry (zero: no service) makes the
    next call STATUS_NOT_IMPLEMENTED; pointing NtTerminateProcess's special record at another
    routine runs that one instead (the trustlet survives, and gets IumGetIdk's answer)."""
    machine = kit.booted("vbs")
    system = machine.system
    process = machine.started(kit.test_image(4), 4)
    get_idk = SECURE_NUMBERS["IumGetIdk"]
    entry = IumServiceTable.SECURE + (get_idk & 0xFFFF) * IumServiceTable.ENTRY
    routine = _as_sk(system, lambda cpu, sk: cpu.read_u64(sk.ium_table_va + entry))
    assert routine != 0
    _as_sk(system, lambda cpu, sk: cpu.write_u64(sk.ium_table_va + entry, 0))
    run = machine.run(process, kit.syscalls_message((get_idk, 0, kit.OUT_VA, 32)))
    assert kit.syscall_statuses(run.reply, 1) == [NtStatus.NOT_IMPLEMENTED]

    terminate = NT_NUMBERS["NtTerminateProcess"]

    def hijack(cpu: Cpu, sk: SecureKernel) -> None:
        base = sk.ium_table_va
        for slot in range(read_field(cpu, base, IumServiceTable.SPECIAL_COUNT)):
            at = base + IumServiceTable.SPECIAL + slot * IumServiceTable.SPECIAL_RECORD
            if cpu.read_u32(at) == terminate:
                cpu.write_u64(at + 8, routine)

    _as_sk(system, hijack)
    run = machine.run(process, kit.syscalls_message((terminate, 0, 0, 0)))
    assert not machine.terminated(process)
    machine.close()


# -- the SkuSiPolicy floors ----------------------------------------------------------------------
def test_the_floors_round_trip_through_the_page() -> None:
    policy = RevocationPolicy(
        components={
            "LsaIso.exe": ComponentFloor(min_version=(10, 0, 26100, 2314), min_svn=7),
            "securekernel.exe": ComponentFloor(min_svn=3),
        },
        revoked_certificates=frozenset({"ab" * 32}),
        revoked_image_hashes=frozenset({"cd" * 32, "ef" * 32}),
    )
    back = sipolicy.decode(sipolicy.encode(policy))
    assert back is not None
    assert back.floor("lsaiso.exe") == policy.floor("LsaIso.exe")
    assert back.floor("SECUREKERNEL.EXE") == ComponentFloor(min_svn=3)
    assert back.revoked_certificates == policy.revoked_certificates
    assert back.revoked_image_hashes == policy.revoked_image_hashes
    assert sipolicy.decode(sipolicy.encode(None)) is None


def test_the_loader_copies_the_floors_and_the_sk_keeps_no_python_copy() -> None:
    system = boot(preset("hardened"))
    assert system.sk is not None and not hasattr(system.sk, "revocation")
    floors = sipolicy.host_read(_ram(system), system.sk)
    assert floors is not None
    assert floors.floor("LsaIso.exe") == ComponentFloor((10, 0, 26100, 2314), 7)
    assert system.machine is not None
    system.machine.close()


def test_the_floors_in_memory_decide_admission() -> None:
    machine = kit.booted("vbs")  # no floors: a downgraded LsaIso is admitted
    system = machine.system
    old = trustlet_image(LSAISO, component=OLD_LSAISO)
    assert machine.start(old, 1, LSAISO)[0] == NtStatus.SUCCESS
    floor = RevocationPolicy(components={"LsaIso.exe": ComponentFloor((10, 0, 26100, 2314))})
    page = sipolicy.encode(floor)
    _as_sk(system, lambda cpu, sk: cpu.write(sk.revocation_va, page))
    mark = machine.mark()
    assert machine.start(old, 1, LSAISO)[0] == NtStatus.IMAGE_CERT_REVOKED
    assert [e.mechanism for e in machine.skci_events(mark)] == ["skci.revocation"]
    # Zero the count again: the floor is gone for the next admission.
    _as_sk(system, lambda cpu, sk: cpu.write_u32(sk.revocation_va, 0))
    assert machine.start(old, 1, LSAISO)[0] == NtStatus.SUCCESS
    machine.close()


# -- the intercept log -------------------------------------------------------------------------
def test_intercepts_are_logged_in_sk_memory_at_the_slot_the_count_names() -> None:
    machine = kit.booted("vbs")
    system = machine.system
    sk, nt = system.sk, system.nt
    assert sk is not None and nt is not None and system.machine is not None
    _as_sk(system, lambda cpu, sk: cpu.write_u64(sk.intercepts_va, 5))  # five logged before
    target = sk.state_gpa  # an SK page: VTL0 has no right on it
    vp = system.machine.bsp
    with pytest.raises(Bugcheck):  # NT bugchecks on the #GP the SK injects
        vp.read(DIRECT_MAP + target, 8)
    count, records = intercepts.host_log(_ram(system), sk)
    assert count == 6 and len(records) == 6
    assert records[-1].gpa & ~0xFFF == target and records[-1].vp == 0
    raw = _ram(system).read(sk.intercepts_gpa + InterceptLog.RECORDS + 5 * InterceptLog.RECORD, 32)
    assert int.from_bytes(raw[16:24], "little") & ~0xFFF == target  # written at slot 5
    assert _ram(system).read(sk.intercepts_gpa + InterceptLog.RECORDS, 32) == bytes(32)


def test_invariant_6_classes_the_new_sk_pages() -> None:
    system = boot(preset("hardened"))
    sk = system.sk
    assert sk is not None and system.sk_space is not None and isinstance(sk.hvpt, hvpt.HvptState)
    pages = skstate.classify(sk, system.sk_space)
    assert sk.storage_gpa >> PAGE_SHIFT in pages.allocation
    records = sk.hvpt.records_gpa >> PAGE_SHIFT
    assert records in pages.allocation and pages.writers[records] == skstate.KDP_WRITERS
    assert sk.revocation_gpa >> PAGE_SHIFT in pages.static  # never changes after boot
    assert sk.intercepts_gpa >> PAGE_SHIFT in pages.scratch  # SINT0 appends, by design
    assert system.machine is not None
    system.machine.close()


# -- SKPROCESS: DirectoryTableBase and frame lists ---------------------------------------------
def test_probes_walk_the_tables_the_skprocess_names_every_time() -> None:
    machine = kit.booted("vbs")
    system = machine.system
    process = machine.started(kit.test_image(4), 4)
    secure = machine.secure_process(process)
    heap = ium.HEAP_VA

    def probe(write: bool) -> bool:
        return bool(
            _as_sk(
                system,
                lambda cpu, sk: secure_syscalls._probe(sk, cpu, secure, heap, 8, write),
            )
        )

    assert probe(True) and probe(False)
    ram = _ram(system)
    root = secure.host_root(ram)
    tables = PageTables(PhysAccess.direct(ram, "test"), root=root)
    leaf = tables.lookup(heap)
    assert leaf is not None and leaf & Pte.RW
    entry = tables._entry_gpa(heap, 3, create=False)
    assert entry is not None
    # Read-only now (a store by SK code).  The probe cache in the SKPROCESS page still holds
    # the earlier walk (as a TLB would) until the SK flushes it, as it does after its own edits.
    _as_sk(system, lambda cpu, sk: cpu.write_u64(DIRECT_MAP + entry, leaf & ~int(Pte.RW)))
    assert probe(True)
    flush = secure_syscalls.flush_probes
    _as_sk(system, lambda cpu, sk: flush(cpu, secure))
    assert not probe(True) and probe(False)  # the walk of the tables in memory decides
    # The cache is SK memory too: an entry saying "writable" makes the next probe pass.
    vpn = heap >> PAGE_SHIFT
    slot = secure.object_va + SkProcess.PROBE_CACHE + 8 * (vpn % SkProcess.PROBE_SLOTS)
    forged = vpn << 2 | SkProcess.PROBE_READ | SkProcess.PROBE_WRITE
    _as_sk(system, lambda cpu, sk: cpu.write_u64(slot, forged))
    assert probe(True)
    # DirectoryTableBase names an empty table: nothing is mapped for the next walk.
    empty = _as_sk(system, lambda cpu, sk: sk.alloc_frame(cpu)) << PAGE_SHIFT
    field_va = secure.object_va + SkProcess.DIRECTORY_TABLE_BASE.offset
    _as_sk(system, lambda cpu, sk: (cpu.write_u64(field_va, empty), flush(cpu, secure)))
    assert not probe(False)
    _as_sk(system, lambda cpu, sk: cpu.write_u64(field_va, root))
    assert probe(False)
    machine.close()


def test_rundown_clears_the_private_pages_the_frame_list_names() -> None:
    machine = kit.booted("vbs")
    system = machine.system
    process = machine.started(kit.test_image(4), 4)
    assert machine.run(process, kit.message(kit.OP_ECHO, b"in the message page")).status == 0
    secure = machine.secure_process(process)
    ram = _ram(system)
    private = secure.host_private_pfns(ram)
    assert len(private) == ium.PRIVATE_PAGES and secure.host_table_pfns(ram)
    assert b"in the message page" in ram.read(private[1] << PAGE_SHIFT, PAGE_SIZE)  # the reply
    count_va = secure.object_va + SkProcess.PRIVATE_COUNT.offset
    _as_sk(system, lambda cpu, sk: cpu.write_u32(count_va, 1))  # the list names page 0 only
    assert _call(system, Service.RUNDOWN_PROCESS, process.secure_pid)[0] == NtStatus.SUCCESS
    assert ram.read(private[0] << PAGE_SHIFT, PAGE_SIZE) == bytes(PAGE_SIZE)
    assert b"in the message page" in ram.read(private[1] << PAGE_SHIFT, PAGE_SIZE)
    machine.close()


# -- HVPT: whether a page is pinned is what the HLAT tables say --------------------------------
def test_is_pinned_walks_the_hlat_tables_in_sk_memory() -> None:
    system = boot(preset("hardened"))
    sk = system.sk
    assert sk is not None
    ram = _ram(system)
    assert "nt.code" in {label for _, _, label in hvpt.host_ranges(ram, sk)}
    assert _as_sk(system, lambda cpu, sk: hvpt.is_pinned(sk, cpu, CODE_BASE))
    gpn = hvpt.host_pinned(ram, sk, CODE_BASE)
    assert gpn is not None
    root = hvpt.host_root(ram, sk)
    # The HLAT PML4 entry for the code range says "restart" now (a store by SK code).
    entry = root + ((CODE_BASE >> 39) & 0x1FF) * 8
    _as_sk(system, lambda cpu, sk: cpu.write_u64(DIRECT_MAP + entry, hvpt.RESTART | 1))
    assert not _as_sk(system, lambda cpu, sk: hvpt.is_pinned(sk, cpu, CODE_BASE))
    assert hvpt.host_pinned(ram, sk, CODE_BASE) is None
    assert system.machine is not None
    system.machine.close()


# -- CLOSE_SECURE_HANDLE -----------------------------------------------------------------------
def _handle_events(system: System) -> list[tuple[str, Any]]:
    return [
        (e.outcome, e.detail.get("handle"))
        for e in system.trace.events
        if e.kind == "securecall" and e.mechanism == "securecall.handle"
    ]


@pytest.mark.parametrize("build", ["A", "B"])
def test_close_frees_an_allocation_and_its_handle(build: str) -> None:
    system = boot(preset("vbs").with_changes(build=build))
    assert system.nt is not None and system.machine is not None and system.sk is not None
    sk = system.sk
    ntkdp.install(system.nt)
    cpu = system.machine.bsp.cpu
    status, handle = ntkdp.create_secure_allocation(system.nt, cpu, 64)
    assert status == NtStatus.SUCCESS
    assert ntkdp.fill_secure_allocation(system.nt, cpu, handle, 0, b"S" * 64) == NtStatus.SUCCESS
    kind, body = objects.host_entries(_ram(system).read, sk)[handle]
    assert kind == ObjectType.SECURE_ALLOCATION
    buffer = _as_sk(system, lambda c, s: read_field(c, body, SecureAllocation.VA))
    assert _call(system, Service.CLOSE_SECURE_HANDLE, handle)[0] == NtStatus.SUCCESS
    assert handle not in objects.host_entries(_ram(system).read, sk)
    block = (body - sk.objects_va) // ObjectPool.BLOCK
    bitmap = _ram(system).read(sk.objects_gpa + (block >> 3), 1)[0]
    assert not bitmap >> (block & 7) & 1  # the body's block is free again
    assert _as_sk(system, lambda c, s: c.read(buffer, 64)) == bytes(64)  # nothing lingers
    assert ("closed", handle) in _handle_events(system)
    # The handle names nothing now: a second close and a fill get STATUS_INVALID_HANDLE.
    assert _call(system, Service.CLOSE_SECURE_HANDLE, handle)[0] == NtStatus.INVALID_HANDLE
    assert ntkdp.fill_secure_allocation(system.nt, cpu, handle, 0, b"x") == NtStatus.INVALID_HANDLE
    system.machine.close()


def test_close_refuses_bad_handles_with_windows_statuses() -> None:
    machine = kit.booted("vbs")
    system = machine.system
    sk = system.sk
    assert sk is not None and system.nt is not None and system.machine is not None
    first = HandleTable.FIRST_HANDLE
    for bad in (0, 0x1234, first, first + 2, first + 4 * HandleTable.MAX, first + 4 * 200):
        assert _call(system, Service.CLOSE_SECURE_HANDLE, bad)[0] == NtStatus.INVALID_HANDLE
        assert ("invalid", bad) in _handle_events(system)
    # A trustlet's SKPROCESS ends with RUNDOWN_PROCESS, not with a close.
    process = machine.started(kit.test_image(4), 4)
    status = _call(system, Service.CLOSE_SECURE_HANDLE, process.secure_pid)[0]
    assert status == NtStatus.HANDLE_NOT_CLOSABLE == 0xC000_0235
    assert machine.run(process, kit.message(kit.OP_ECHO, b"still here")).status == 0
    # An entry whose object is not one of the SK's (a forged pointer) is refused, nothing freed.
    ntkdp.install(system.nt)
    cpu = system.machine.bsp.cpu
    status, handle = ntkdp.create_secure_allocation(system.nt, cpu, 64)
    assert status == NtStatus.SUCCESS
    entry = sk.handles_va + HandleTable.ENTRIES + objects.index_of(handle) * HandleTable.ENTRY
    body = _as_sk(system, lambda c, s: c.read_u64(entry))
    _as_sk(system, lambda c, s: c.write_u64(entry, sk.state_va))
    assert _call(system, Service.CLOSE_SECURE_HANDLE, handle)[0] == NtStatus.INVALID_HANDLE
    assert ("not-an-object", handle) in _handle_events(system)
    assert handle in objects.host_entries(_ram(system).read, sk)  # the entry stays
    # The type is the entry's: retyped to a secure pool, the handle is not closable.
    _as_sk(system, lambda c, s: c.write_u64(entry, body))
    _as_sk(system, lambda c, s: c.write_u32(entry + 8, ObjectType.SECURE_POOL))
    assert _call(system, Service.CLOSE_SECURE_HANDLE, handle)[0] == NtStatus.HANDLE_NOT_CLOSABLE
    _as_sk(system, lambda c, s: c.write_u32(entry + 8, ObjectType.SECURE_ALLOCATION))
    assert _call(system, Service.CLOSE_SECURE_HANDLE, handle)[0] == NtStatus.SUCCESS
    machine.close()


def test_close_frees_a_secure_image_before_validation_but_not_a_loaded_one() -> None:
    system = boot(preset("vbs-hvci"))
    assert system.sk is not None and system.nt is not None and system.machine is not None
    sk = system.sk
    loaded = [
        h
        for h, (kind, va) in objects.host_entries(_ram(system).read, sk).items()
        if kind == ObjectType.SECURE_IMAGE
    ]
    assert loaded  # the boot drivers' images, validated and mapped
    status = _call(system, Service.CLOSE_SECURE_HANDLE, loaded[0])[0]
    assert status == NtStatus.HANDLE_NOT_CLOSABLE
    _kind, va = objects.host_entries(_ram(system).read, sk)[loaded[0]]
    pfn = (va - DIRECT_MAP) >> PAGE_SHIFT
    # Back to CREATED with no PFNs recorded (a store by SK code): now NT may close it.
    _as_sk(system, lambda c, s: write_field(c, va, SecureImage.PFN_COUNT, 0))
    _as_sk(system, lambda c, s: write_field(c, va, SecureImage.STAGE, SecureImage.CREATED))
    assert _call(system, Service.CLOSE_SECURE_HANDLE, loaded[0])[0] == NtStatus.SUCCESS
    assert pfn not in sk.host_own_pages(_ram(system))  # the body went back to the pool
    system.machine.close()
