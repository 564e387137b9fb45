"""The SK finds a secure process from its handle entry in SK memory, as SkobReferenceObjectByHandle
trusts the entry's object and type (issue 10 part 1): there is no second, Python list of which
objects are processes.  So a VTL1 writer that builds an SKPROCESS of its own and points a
handle at it has made a process (here, a debuggable copy of LsaIso's), and an object naming no
image SKCI admitted is refused."""

from __future__ import annotations

from vbsim.attacks.context import AttackContext
from vbsim.boot.disk import Disk
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.cpu import Cpu
from vbsim.ium_abi import HEAP_VA
from vbsim.nt.kernel import NtKernel
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset
from vbsim.sk import objects
from vbsim.sk.kernel import SecureKernel
from vbsim.sk.layouts import HandleTable, SkProcess, write_field
from vbsim.sk.sscn import Service

PAGE = 4096


def _booted() -> tuple[AttackContext, SecureKernel, NtKernel, int, int]:
    """A vbs machine and LsaIso's secure handle and SKPROCESS VA."""
    policy = preset("vbs")
    ctx = AttackContext(policy, "vbs", Disk.install(policy))
    ctx.boot()
    sk, nt, machine = ctx.booted.sk, ctx.booted.nt, ctx.booted.machine
    assert sk is not None and nt is not None and machine is not None
    [(handle, lsaiso)] = sk.host_processes(machine.ram).items()
    assert lsaiso.host_trustlet_id(machine.ram) == 1
    return ctx, sk, nt, handle, lsaiso.object_va


def _debug_read(ctx: AttackContext, nt: NtKernel, handle: int) -> str:
    """K0: DEBUG_READ_WRITE_MEMORY on the trustlet's heap (the SK allows it only for a
    process whose policy says debuggable)."""

    def k0(cpu: Cpu) -> str:
        assert nt.vsl is not None
        _, gpa = nt.alloc_kernel_page(cpu)
        status, _ = nt.vsl.call(
            cpu, Service.DEBUG_READ_WRITE_MEMORY, handle, HEAP_VA, gpa >> 12, 16, 0
        )
        return NtStatus.name_of(status)

    result: str = ctx.kernel(k0)
    return result


def _repoint(ctx: AttackContext, handle: int, source: int, debug: int, image: bool) -> int:
    """K1: a fresh SK frame holding a copy of the SKPROCESS at ``source`` (DEBUG := ``debug``;
    without ``image`` its image PFNs zeroed), and the handle's entry pointed at it."""
    index = objects.index_of(handle)

    def k1(cpu: Cpu) -> int:
        sk = cpu.kernel()
        assert isinstance(sk, SecureKernel)
        va = sk.phys_va(sk.alloc_frame(cpu) << 12)
        cpu.write(va, cpu.read(source, PAGE))
        write_field(cpu, va, SkProcess.DEBUG, debug)
        if not image:
            cpu.write(va + SkProcess.IMAGE_PFNS, bytes(PAGE - SkProcess.IMAGE_PFNS))
        entry = sk.handles_va + HandleTable.ENTRIES + index * HandleTable.ENTRY
        cpu.write_u64(entry + HandleTable.OBJECT.offset, va)
        return va

    forged: int = ctx.secure_kernel(k1)
    return forged


def test_a_forged_debuggable_copy_behind_the_handle_is_debugged() -> None:
    ctx, _, nt, handle, lsaiso = _booted()
    assert _debug_read(ctx, nt, handle) == "STATUS_ACCESS_DENIED"  # LsaIso is not debuggable
    _repoint(ctx, handle, lsaiso, debug=1, image=True)
    assert _debug_read(ctx, nt, handle) == "STATUS_SUCCESS"  # the copy the handle names is
    machine = ctx.booted.machine
    assert machine is not None
    # The real object is unchanged: the decision read the object the entry points at.
    debug = machine.ram.read(lsaiso - DIRECT_MAP + SkProcess.DEBUG.offset, SkProcess.DEBUG.size)
    assert int.from_bytes(debug, "little") == 0


def test_an_object_naming_no_admitted_image_is_no_process() -> None:
    ctx, _, nt, handle, lsaiso = _booted()
    _repoint(ctx, handle, lsaiso, debug=1, image=False)
    assert _debug_read(ctx, nt, handle) == "STATUS_INVALID_HANDLE"
