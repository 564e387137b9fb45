"""NtCreateUserProcess and NtFreeVirtualMemory from user mode."""

from __future__ import annotations

from vbsim.boot.chain import boot
from vbsim.hw.code import guest_code
from vbsim.hw.vp import VirtualProcessor
from vbsim.nt.apps import HELLO
from vbsim.nt.process import Token, host_view
from vbsim.nt.syscalls import PAGE_READWRITE, syscall
from vbsim.nt.vad import process_regions
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset

SCRATCH = 0x0000_0000_0700_0000


@guest_code("tests.nt.create_and_free")
def _create_and_free(vp: VirtualProcessor, name: bytes, scratch: int) -> tuple[int, int, int, int]:
    vp.write(scratch, name)
    created = syscall(vp, "NtCreateUserProcess", scratch, len(name), scratch + 0x100)
    pid = vp.read_u64(scratch + 0x100)
    allocated = syscall(vp, "NtAllocateVirtualMemory", scratch + 0x200, 4096, PAGE_READWRITE)
    base = vp.read_u64(scratch + 0x200)
    vp.write(base, b"secret")
    freed = syscall(vp, "NtFreeVirtualMemory", base)
    return created, pid, allocated, freed


def test_create_user_process_inherits_the_token_and_runs() -> None:
    system = boot(preset("vbs"))
    nt, vp = system.nt, system.machine.bsp if system.machine else None
    assert nt is not None and vp is not None
    parent = nt.create_process(vp.cpu, "parent.exe", Token("bob"))
    scratch = nt.allocate(vp.cpu, parent, 4096).base
    entry = nt.map_code(vp.cpu, parent, ["tests.nt.create_and_free"])["tests.nt.create_and_free"]
    run = nt.run_user(vp.cpu, parent, entry, HELLO.encode(), scratch)
    assert run.terminated is None
    created, pid, allocated, freed = run.returned
    assert (created, allocated, freed) == (NtStatus.SUCCESS,) * 3
    child = system.process(pid)
    assert child.name == HELLO
    assert system.machine is not None
    mine, theirs = (host_view(system.machine.ram, p.eprocess) for p in (child, parent))
    # A copy of the parent's token (SeSubProcessToken): same user and rights, its own TOKEN.
    assert mine.user == theirs.user == "bob" and mine.token != theirs.token
    assert (mine.admin, mine.privileges) == (theirs.admin, theirs.privileges)
    # The freed page is gone from the parent's address space and its bytes were cleared.
    assert system.machine is not None
    regions = process_regions(system.machine.ram, parent)
    assert all(region.base != scratch + 0x200 for region in regions)
    child_run = nt.run_user(
        vp.cpu, child, nt.map_code(vp.cpu, child, ["app.hello.main"])["app.hello.main"]
    )
    assert child_run.terminated is None and child_run.returned == NtStatus.SUCCESS


def test_unknown_image_and_bad_free() -> None:
    system = boot(preset("vbs-off"))
    nt, vp = system.nt, system.machine.bsp if system.machine else None
    assert nt is not None and vp is not None
    parent = nt.create_process(vp.cpu, "parent.exe", Token("bob"))
    scratch = nt.allocate(vp.cpu, parent, 4096).base
    entry = nt.map_code(vp.cpu, parent, ["tests.nt.create_and_free"])["tests.nt.create_and_free"]
    run = nt.run_user(vp.cpu, parent, entry, b"nothere.exe", scratch)
    assert run.returned[0] == NtStatus.OBJECT_NAME_NOT_FOUND
