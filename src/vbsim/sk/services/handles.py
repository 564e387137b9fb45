"""CLOSE_SECURE_HANDLE: NT closes a secure handle it holds (vbs-internals §2.3, §2.4 gives only
the service numbers: 29 in build A, 30 in build B, ``sk.sscn``).

Field1 is the handle.  The SK resolves it in its handle table in SK memory (``sk.objects``) and
checks, in order, reading the entry and the object now:

1. the handle's encoding and the entry (``FIRST_HANDLE + index * 4``, a live entry; entry 0 is
   "Secure System" and never NT's) → else STATUS_INVALID_HANDLE (0xC0000008), what NtClose
   returns for a handle that names nothing (ntstatus.h; Windows Internals 7th ed. Part 2 ch. 8
   "Object handles and the process handle table");
2. the object's owner: an entry whose object pointer is not an object of its type in the SK's
   own memory (a small-object pool block for an allocation, an SK-pool frame for a
   SECURE_IMAGE) is refused as STATUS_INVALID_HANDLE too: the SK never frees what is not its
   object, whatever the table says;
3. the object's type: an SKPROCESS ends with RUNDOWN_PROCESS and a secure pool lives for the
   boot, and a SECURE_IMAGE whose pages FINISH_SECURE_IMAGE_VALIDATION recorded holds SLAT
   state only UNLOAD_DRIVER gives back: those are STATUS_HANDLE_NOT_CLOSABLE (0xC0000235,
   NtClose's status for a handle protected from close).

A handle that passes is freed: the entry is zeroed (the next lookup of the value fails), the
allocation's buffer is cleared and its block returned, a SECURE_IMAGE body's frames go back to
the SK's pool.  Every decision is a trace event (``securecall.handle``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hw.x86 import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from vbsim.ntstatus import NtStatus
from vbsim.sk import objects
from vbsim.sk.kernel import Reply, SecureKernel
from vbsim.sk.layouts import ObjectType, read_field
from vbsim.sk.layouts import SecureAllocation as AllocationLayout
from vbsim.sk.layouts import SecureImage as Img
from vbsim.sk.services import allocation, hvci
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.sk.callargs import SecureCallArgs

#: Types NT may not close (see the module docstring, item 3).
_NOT_CLOSABLE = frozenset({ObjectType.SKPROCESS, ObjectType.SECURE_POOL})


def _refuse(sk: SecureKernel, vp: Cpu, outcome: str, status: NtStatus, **detail: object) -> Reply:
    sk.emit(vp, "securecall", "securecall.handle", outcome, **detail)
    return Reply(status)


def _pool_frame(sk: SecureKernel, vp: Cpu, va: int) -> bool:
    """Whether ``va`` is the direct-map VA of a frame of the SK's own pool (object bodies)."""
    pfn = (va - sk.phys_va(0)) >> PAGE_SHIFT
    base, count = sk.pool_range(vp)
    return not va & PAGE_MASK and base <= pfn < base + count


def close_secure_handle(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    handle = args.fields[0]
    kind, va = objects.lookup(sk, vp, handle)
    name = ObjectType.NAMES.get(kind, str(kind))
    if kind == ObjectType.NONE or va == 0:
        return _refuse(sk, vp, "invalid", NtStatus.INVALID_HANDLE, handle=handle)
    if kind in _NOT_CLOSABLE:
        return _refuse(sk, vp, "not-closable", NtStatus.HANDLE_NOT_CLOSABLE, handle=handle,
                       type=name)  # fmt: skip
    if kind == ObjectType.SECURE_ALLOCATION:
        if not objects.is_block(sk, va):
            return _refuse(sk, vp, "not-an-object", NtStatus.INVALID_HANDLE, handle=handle,
                           type=name, object=va)  # fmt: skip
        _free_allocation(sk, vp, va)
    elif kind == ObjectType.SECURE_IMAGE:
        if not _pool_frame(sk, vp, va):
            return _refuse(sk, vp, "not-an-object", NtStatus.INVALID_HANDLE, handle=handle,
                           type=name, object=va)  # fmt: skip
        if read_field(vp, va, Img.PFN_COUNT) or read_field(vp, va, Img.STAGE) not in (
            Img.CREATED,
            Img.HASHED,
        ):
            return _refuse(sk, vp, "not-closable", NtStatus.HANDLE_NOT_CLOSABLE, handle=handle,
                           type=name)  # fmt: skip
        hvci.free_image(sk, vp, va)
    else:  # a type index the SK does not know: the entry names no object of its own
        return _refuse(sk, vp, "invalid", NtStatus.INVALID_HANDLE, handle=handle, type=name)
    objects.close(sk, vp, handle)
    sk.emit(vp, "securecall", "securecall.handle", "closed", handle=handle, type=name)
    return Reply(NtStatus.SUCCESS)


def _free_allocation(sk: SecureKernel, vp: Cpu, body: int) -> None:
    """Clear the buffer (its bytes were VTL0's data the SK kept; nothing lingers) and free the
    body.  The arena is carved top-down and not reused (``sk.services.allocation``)."""
    st = allocation.state(sk)
    buffer = read_field(vp, body, AllocationLayout.VA)
    pages = read_field(vp, body, AllocationLayout.PAGES)
    end = st.arena_va + st.arena_pages * PAGE_SIZE
    if st.arena_va <= buffer and pages <= st.arena_pages and buffer + pages * PAGE_SIZE <= end:
        vp.write(buffer, bytes(pages * PAGE_SIZE))
    objects.free_block(sk, vp, body)


def register(sk: SecureKernel) -> None:
    sk.handlers[Service.CLOSE_SECURE_HANDLE] = close_secure_handle
