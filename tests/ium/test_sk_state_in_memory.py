"""The Secure Kernel decides from its memory (issue 10 part 1): a test standing outside the
machine writes the bytes of an SK structure in VTL1 RAM, and the SK's next decision changes.

Also: the layouts are consistent, the SecureKernel object keeps no machine, policy, trace or
``ext``, and the SK allocates no frame through the host allocator after boot.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest

from vbsim.boot.chain import boot
from vbsim.hw.code import guest_code
from vbsim.hw.faults import Bugcheck, GuestTermination
from vbsim.hw.ram import FrameAllocator
from vbsim.hw.slat import KX, UX, R, W
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.invariants.skstate import HostMem
from vbsim.nt.syscalls import NUMBERS
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset
from vbsim.sk import layouts as L
from vbsim.sk.kernel import Phase, SecureKernel
from vbsim.sk.layouts import Config, Dispatch, IumFilter
from vbsim.sk.services.hvci import PageState
from vbsim.sk.sscn import Service

from . import kit


# -- layouts -----------------------------------------------------------------------------------
def _fields(cls: type) -> list[L.Field]:
    return [v for v in vars(cls).values() if isinstance(v, L.Field)]


_GROUPS = {
    "config": ([*L.Config.__dict__.values()], L.Config.SIZE),
    "state": ([L.State.PHASE, L.State.TRUSTED_COUNT, L.State.READY], L.State.TRUSTED),
    "trusted": ([L.State.TRUSTED_NAME, L.State.TRUSTED_VALUE], L.State.TRUSTED_ENTRY),
    "allow": ([L.AllowList.COUNT], L.AllowList.IDS),
    "hashes": ([L.Hvci.HASH_COUNT, L.Hvci.HASH_CAPACITY], L.Hvci.HASH_RECORDS),
    "record": ([L.Hvci.RECORD_GPN, L.Hvci.RECORD_SHA256], L.Hvci.RECORD_SIZE),
}


@pytest.mark.parametrize("group", sorted(_GROUPS))
def test_fields_do_not_overlap_fit_and_name_a_source(group: str) -> None:
    values, end = _GROUPS[group]
    fields = sorted((v for v in values if isinstance(v, L.Field)), key=lambda f: f.offset)
    assert fields
    for a, b in itertools.pairwise(fields):
        assert a.offset + a.size <= b.offset, (a, b)
    assert fields[-1].offset + fields[-1].size <= end
    for field in fields:
        assert field.size in (1, 2, 4, 8, 16, 32) and field.source


def test_structures_fit_their_pages() -> None:
    assert max(f.offset + f.size for f in _fields(L.Config)) <= L.Config.SIZE <= PAGE_SIZE
    assert L.State.TRUSTED + L.State.TRUSTED_MAX * L.State.TRUSTED_ENTRY <= PAGE_SIZE
    assert L.AllowList.IDS + L.AllowList.MAX * L.AllowList.ID_SIZE <= PAGE_SIZE
    assert IumFilter.SIZE <= PAGE_SIZE and max(NUMBERS.values()) < IumFilter.NUMBERS
    assert Dispatch.SIZE % PAGE_SIZE == 0 and Dispatch.ENTRIES > 1792  # BUGCHECK's SSCN
    hashes = L.Hvci.HASH_RECORDS + L.Hvci.HASH_MAX * L.Hvci.RECORD_SIZE
    assert hashes <= L.Hvci.HASH_PAGES * PAGE_SIZE
    assert L.Hvci.RECORD_SHA256.offset + 32 == L.Hvci.RECORD_SIZE - 0


def test_accessors_and_host_readers_agree() -> None:
    system = boot(preset("hardened"))
    sk, machine = system.sk, system.machine
    assert sk is not None and machine is not None
    mem = HostMem(machine.ram, sk)
    assert L.read_field(mem, sk.config_va, Config.HVCI) == 1
    assert sk.host_config(machine.ram, Config.HVCI) == 1
    assert sk.host_config(machine.ram, Config.VPS) == len(machine.vps)
    assert chr(sk.host_config(machine.ram, Config.BUILD)) == "B"
    assert sk.host_phase(machine.ram) is Phase.PHASE4 and sk.phase(mem) is Phase.PHASE4
    assert L.host_allow_list(machine.ram, sk.allow_gpa) == [1, 2, 3, 4, 5]
    assert sk.allowed_ids(mem) == {1, 2, 3, 4, 5}
    assert sk.host_trusted(machine.ram) == sk.trusted(mem) and sk.trusted(mem)
    assert set(sk.own_pages(mem)) == sk.host_own_pages(machine.ram)


# -- the SecureKernel object is a symbol table ----------------------------------------------------
def test_the_secure_kernel_keeps_no_machine_policy_trace_or_ext() -> None:
    from vbsim.hw.vp import VirtualProcessor
    from vbsim.machine import Machine
    from vbsim.policy import Policy
    from vbsim.trace import Trace

    system = boot(preset("hardened"))
    sk = system.sk
    assert sk is not None
    for name in ("machine", "policy", "trace", "ext", "vtl1_pages", "ready"):
        assert not hasattr(sk, name), name
    forbidden = (Machine, Policy, Trace, VirtualProcessor)
    for name, value in vars(sk).items():
        assert not isinstance(value, forbidden), name


def test_after_boot_the_sk_takes_frames_only_from_its_own_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    machine = kit.booted("hardened")
    sk = machine.system.sk
    assert sk is not None
    calls: list[str] = []
    real = FrameAllocator.alloc

    def spy(self: FrameAllocator, owner: str = "") -> int:
        if owner.startswith("securekernel"):
            calls.append(owner)
        return real(self, owner)

    monkeypatch.setattr(FrameAllocator, "alloc", spy)
    used_before = _pool_used(machine)
    process = machine.started(kit.test_image(4), 4)  # page tables: SK frames
    assert machine.run(process, kit.message(kit.OP_ECHO, b"hi")).reply == b"hi"
    assert calls == []
    assert _pool_used(machine) > used_before


def _pool_used(machine: Any) -> int:
    sk = machine.system.sk
    raw = machine.system.machine.ram.read(sk.pool_gpa, -(-sk.host_pool_count // 8))
    return sum(bin(b).count("1") for b in raw)


# -- a byte in VTL1 RAM changes the SK's next decision --------------------------------------------
def test_the_allow_list_in_memory_decides_admission() -> None:
    machine = kit.booted("vbs")
    sk, ram = machine.system.sk, machine.system.machine.ram
    assert sk is not None
    ids = [1, 2, 3, 5]  # the loader's list without 4
    ram.write(sk.allow_gpa, len(ids).to_bytes(4, "little") + bytes(4))
    ram.write(sk.allow_gpa + L.AllowList.IDS, b"".join(i.to_bytes(4, "little") for i in ids))
    mark = machine.mark()
    status, _ = machine.start(kit.test_image(4), 4)
    assert status == NtStatus.ACCESS_DENIED
    assert [e.mechanism for e in machine.skci_events(mark)] == ["skci.allow-list"]
    ram.write(sk.allow_gpa + L.AllowList.IDS + 12, (4).to_bytes(4, "little"))  # 5 → 4
    status, _ = machine.start(kit.test_image(4), 4)
    assert status == NtStatus.SUCCESS


def test_the_ium_filter_bitmap_decides_each_system_call() -> None:
    machine = kit.booted("vbs")
    sk, ram = machine.system.sk, machine.system.machine.ram
    assert sk is not None
    process = machine.started(kit.test_image(4), 4)
    number = NUMBERS["NtTestAlert"]  # forwarded by the loader's filter
    run = machine.run(process, kit.syscalls_message((number,)))
    assert kit.syscall_statuses(run.reply, 1) == [NtStatus.SUCCESS]
    gpa = sk.filter_gpa + IumFilter.FORWARDED + (number >> 3)
    ram.write(gpa, bytes([ram.read(gpa, 1)[0] & ~(1 << (number & 7)) & 0xFF]))
    run = machine.run(process, kit.syscalls_message((number,)))
    assert kit.syscall_statuses(run.reply, 1) == [NtStatus.INVALID_SYSTEM_SERVICE]


def test_the_dispatch_table_in_memory_decides_dispatch() -> None:
    system = boot(preset("vbs"))
    sk, machine, nt = system.sk, system.machine, system.nt
    assert sk is not None and machine is not None and nt is not None and nt.vsl is not None
    vp = machine.bsp
    null = sk.table.number[Service.NULL]
    entry = sk.dispatch_gpa + null * Dispatch.ENTRY
    assert nt.vsl.call(vp.cpu, Service.NULL)[0] == NtStatus.SUCCESS
    # NULL's entry now points at PHASE4_INIT's routine: the SK runs that (and refuses: the SK is
    # past PHASE3, so PHASE4_INIT answers STATUS_INVALID_DEVICE_STATE).
    phase4 = machine.ram.read_u64(sk.dispatch_gpa + sk.table.number[Service.PHASE4_INIT] * 8)
    machine.ram.write_u64(entry, phase4)
    status, _ = nt.vsl.call(vp.cpu, Service.NULL)
    assert status == NtStatus.INVALID_DEVICE_STATE
    machine.ram.write_u64(entry, 0)  # and an empty entry is an unknown SSCN: bugcheck
    with pytest.raises(GuestTermination) as stop:
        nt.vsl.call(vp.cpu, Service.NULL)
    assert isinstance(stop.value, Bugcheck)


def test_the_page_state_table_in_memory_decides_hvci() -> None:
    system = boot(preset("vbs-hvci"))
    sk, machine, nt = system.sk, system.machine, system.nt
    assert sk is not None and machine is not None and nt is not None and nt.vsl is not None
    vp = machine.bsp
    pfn = system.nt_space.alloc_frame()  # an ordinary VTL0 page: UNVALIDATED
    status, _ = nt.vsl.call(vp.cpu, Service.MAKE_PROTECTED_PAGE_WRITABLE, pfn)
    assert status == NtStatus.INVALID_PARAMETER
    machine.ram.write(sk.hvci.states_gpa + pfn, bytes([PageState.VALIDATED]))
    status, _ = nt.vsl.call(vp.cpu, Service.MAKE_PROTECTED_PAGE_WRITABLE, pfn)
    assert status == NtStatus.SUCCESS  # the SK believed its table
    assert machine.ram.read(sk.hvci.states_gpa + pfn, 1)[0] == PageState.WRITABLE
    assert machine.slat is not None and machine.slat.rights(0, pfn) == R | W | UX
    assert not machine.slat.rights(0, pfn) & KX


def test_the_hvci_switch_in_the_config_block_decides_enforcement() -> None:
    system = boot(preset("vbs-hvci"))
    sk, machine, nt = system.sk, system.machine, system.nt
    assert sk is not None and machine is not None and nt is not None and nt.vsl is not None
    machine.ram.write(sk.config_gpa + Config.HVCI.offset, b"\0")
    status, _ = nt.vsl.call(machine.bsp.cpu, Service.MAKE_PROTECTED_PAGE_EXECUTABLE, 100, 0)
    assert status == NtStatus.NOT_SUPPORTED


def test_the_pool_range_in_the_config_block_decides_allocation() -> None:
    """The SK allocates from the pool its configuration page names: a K1 write that empties it
    makes the next trustlet fail with STATUS_INSUFFICIENT_RESOURCES (the SK keeps serving, and
    the image pages it had protected are VTL0's again)."""
    machine = kit.booted("hardened")
    sk, ram = machine.system.sk, machine.system.machine.ram
    assert sk is not None
    ram.write(sk.config_gpa + Config.POOL_COUNT.offset, bytes(4))
    status, process = machine.start(kit.test_image(4), 4)
    assert (status, process) == (NtStatus.INSUFFICIENT_RESOURCES, None)
    events = [e for e in machine.system.trace.events if e.kind == "ium"]
    assert events[-1].outcome == "pool-exhausted"
    # the pool restored, the SK goes on serving
    ram.write(sk.config_gpa + Config.POOL_COUNT.offset, sk.host_pool_count.to_bytes(4, "little"))
    assert machine.started(kit.test_image(4), 4) is not None


def test_the_ram_size_in_the_config_block_bounds_the_pfns_the_sk_accepts() -> None:
    """vtl0_page() reads RAM's size from the configuration page: shrunk below the image's
    pages, the SK refuses NT's PFN list for the trustlet."""
    machine = kit.booted("vbs")
    sk, ram = machine.system.sk, machine.system.machine.ram
    assert sk is not None
    ram.write(sk.config_gpa + Config.RAM_PAGES.offset, (16).to_bytes(4, "little"))
    status, _ = machine.start(kit.test_image(4), 4)
    assert status == NtStatus.INVALID_PARAMETER


def test_layout_dataclass_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config.HVCI.offset = 3  # type: ignore[misc]
    assert PAGE_SHIFT == 12 and isinstance(SecureKernel, type)


# -- secure process objects and mailboxes ----------------------------------------------------------
def _post(machine: Any, key: int) -> tuple[Any, Any, bytes]:
    import struct

    from vbsim.boot.trustlets import trustlet_image
    from vbsim.ium import vmsp
    from vbsim.ium.images import VMSP

    process = machine.started(trustlet_image(VMSP), 2, VMSP, mailbox_key=key)
    secret = b"vTPM endorsement seed: " + bytes(range(40))
    run = machine.run(process, struct.pack("<II", vmsp.OP_PUBLISH, 3) + secret)
    assert run.status == NtStatus.SUCCESS
    return process, machine.secure_process(process), secret


def test_mailbox_contents_live_in_an_sk_frame_and_the_key_in_the_skprocess_page() -> None:
    from vbsim.guest.address_space import DIRECT_MAP

    machine = kit.booted("vbs")
    sk, ram, nt = machine.system.sk, machine.system.machine.ram, machine.nt
    assert sk is not None and nt.vsl is not None
    process, secure, secret = _post(machine, key=0x5EC2E7)
    base = secure.object_va - DIRECT_MAP
    assert L.host_field(ram, base, L.SkProcess.TRUSTLET_ID) == 2
    assert L.host_field(ram, base, L.SkProcess.MAILBOX_KEY) == 0x5EC2E7
    entry = base + L.SkProcess.MAILBOXES + 3 * L.SkProcess.MAILBOX_ENTRY
    pfn = L.host_field(ram, entry, L.SkProcess.MAILBOX_PFN)
    assert pfn in sk.host_own_pages(ram) and ram.read(pfn << PAGE_SHIFT, len(secret)) == secret
    assert machine.system.machine.slat.rights(0, pfn) == 0
    out = machine.system.nt_space.alloc_frame()
    handle = process.secure_pid
    status, _ = nt.vsl.call(machine.vp.cpu, Service.RETRIEVE_MAILBOX, handle, 3, 0x5EC2E7, out)
    assert status == NtStatus.SUCCESS and ram.read(out << PAGE_SHIFT, len(secret)) == secret
    # The SK checks the key stored in its object: change it there and the same call is refused.
    ram.write(base + L.SkProcess.MAILBOX_KEY.offset, (0x1234).to_bytes(8, "little"))
    status, _ = nt.vsl.call(machine.vp.cpu, Service.RETRIEVE_MAILBOX, handle, 3, 0x5EC2E7, out)
    assert status == NtStatus.ACCESS_DENIED


def test_a_keyless_model_trustlets_mailbox_is_tainted() -> None:
    from vbsim.invariants import taint

    machine = kit.booted("vbs")
    sk = machine.system.sk
    assert sk is not None
    _, _secure, secret = _post(machine, key=0)
    assert machine.system.machine is not None
    secrets = taint.collect(sk, machine.system.machine.ram)
    names = {s.name for s in secrets.items}
    mailbox = [s for s in secrets.items if s.name.startswith("mailbox[3]@trustlet2")]
    assert mailbox and mailbox[0].data == secret and not mailbox[0].canary
    assert any(n.startswith("canary:mailbox[3]@trustlet2") for n in names)


def test_the_kdp_owner_table_in_memory_keeps_a_page_read_only() -> None:
    system = boot(preset("vbs-hvci"))
    sk, machine, nt = system.sk, system.machine, system.nt
    assert sk is not None and machine is not None and nt is not None and nt.vsl is not None
    assert machine.slat is not None
    pfn = system.nt_space.alloc_frame()
    before = machine.slat.rights(0, pfn)
    machine.ram.write(sk.hvci.states_gpa + pfn, bytes([PageState.VALIDATED]))
    machine.ram.write(sk.kdp.owners_gpa + pfn, bytes([L.Kdp.STATIC]))
    status, _ = nt.vsl.call(machine.bsp.cpu, Service.MAKE_PROTECTED_PAGE_WRITABLE, pfn)
    assert status == NtStatus.SUCCESS
    assert machine.slat.rights(0, pfn) == before  # HVCI left KDP's page alone
    assert [e.outcome for e in system.trace.events if e.mechanism == "hvci.kdp"][-1:] == [
        "kept-read-only"
    ]


SEEN_CURRENT: list[int] = []


@guest_code("tests.ium.prcb.main")
def _prcb_main(vp: Any, message: int, length: int, reply: int) -> int:
    """A trustlet entry that lets the test (standing outside) look at the SK's processor block
    while the trustlet runs."""
    machine = _PRCB_MACHINE[0]
    sk = machine.system.sk
    assert sk is not None and machine.system.machine is not None
    SEEN_CURRENT.append(sk.host_current_object(machine.system.machine.ram, vp.index))
    return 0


_PRCB_MACHINE: list[Any] = []


def test_the_processor_block_names_the_running_trustlet() -> None:
    """Per-VP current process (issue 10 part 1): while a trustlet runs, the SK processor block
    of its VP names its SKPROCESS object, and nothing once the run is over; the SK's identity
    decisions (``ium.process.current``) read that field."""
    from vbsim.boot.trustlets import trustlet_image

    machine = kit.booted("vbs")
    _PRCB_MACHINE[:] = [machine]
    SEEN_CURRENT.clear()
    try:
        image = trustlet_image("Prcb.exe", trustlet_id=5, entry="tests.ium.prcb.main")
        process = machine.started(image, 5, "Prcb.exe")
        secure = machine.secure_process(process)
        sk = machine.system.sk
        ram = machine.system.machine.ram if machine.system.machine else None
        assert sk is not None and ram is not None
        machine.run(process)
        assert [secure.object_va] == SEEN_CURRENT
        assert sk.host_current_object(ram, 0) == 0
    finally:
        machine.close()
