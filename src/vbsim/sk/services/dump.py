"""PREPARE_FOR_CRASHDUMP and PREPARE_FOR_HIBERNATION: what NT may put in a dump or a hiberfile of
VTL1 memory (vbs-internals §5.3 last bullet, §6 A27, §7 "Crash dumps: Encrypted").

NT writes dumps and hibernation files itself, from the RAM it can read.  VTL1 memory it cannot
read (its SLAT has no access), so it asks the Secure Kernel, page by page:

- ``LIST`` (Field1 = 0): Field2 = PFN of a VTL0 page for the answer, Field3 = first index.  The SK
  writes up to :data:`LIST_MAX` u64 entries, one per VTL1 page NT must not read: the PFN, with
  :data:`ENTRY_GIVEN` set when the SK will give ciphertext of that page for this purpose (NT asks
  ``PAGE`` only for those, and stores the rest as withheld without a call).  It returns
  ``[total, written, session]``; ``session`` is this boot's dump nonce (not a secret).
- ``PAGE`` (Field1 = 1): Field2 = one PFN of that list, Field3 = PFN of a VTL0 page for the data.
  The SK decides again from its own memory (the list is advice to NT, not a grant): it writes the
  page's contents *encrypted* (AES-256-CTR with the dump key, counter block ``session || pfn ||
  0``) and returns ``[PAGE_ENCRYPTED]``, or writes zeros and returns ``[PAGE_WITHHELD]``.

What the SK gives:
- a trustlet's private pages (heap, stack, its page tables): encrypted for hibernation (the
  trustlet must resume, WI7-P1-ch3 "trustlet pages are encrypted before being paged out or
  hibernated"); for a crash dump, encrypted only if the trustlet's signed ``CrashDump`` policy
  (§3.1 policy 3) allows a dump of it, otherwise withheld;
- the Secure Kernel's own memory: withheld.

The dump key is drawn at SK start and lives in a Secure Kernel data page (guest RAM that VTL0
cannot reach after phase 1); only ciphertext ever leaves VTL1.  On Windows the dump key is wrapped
to the policy's ``CrashDumpKey`` (a Microsoft public key, §3.1 policy 4) so that Microsoft can
read the dump; the model keeps no private key for it at all, which gives VTL0 the same view.
The request layout is the model's own: the real argument layout of these services is not public.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.ntstatus import NtStatus
from vbsim.sk import objects
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.ium import process as ium
from vbsim.sk.kernel import Reply, SecureKernel
from vbsim.sk.layouts import ObjectType
from vbsim.sk.layouts import SkProcess as SkProcessLayout
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu

REQUEST_LIST, REQUEST_PAGE = 0, 1
PAGE_WITHHELD, PAGE_ENCRYPTED = 0, 1
#: PFNs per LIST answer: one VTL0 page of u64 entries.
LIST_MAX = PAGE_SIZE // 8
#: LIST entry bit: the SK gives ciphertext of this page (PFNs are far below bit 63).
ENTRY_GIVEN = 1 << 63
KEY_SIZE = 32


def provision(sk: SecureKernel) -> None:
    """Loader time: the dump key (32 bytes) and this boot's session nonce (8 bytes) in an SK data
    page, as ``sk.ium.keys`` provisions the VSM keys."""
    va, gpa = sk.builder().alloc_data()
    assert sk.loader is not None
    sk.loader.write(gpa, sk.loader.entropy(KEY_SIZE + 8))  # the loader writes the image
    sk.dump_key_va = va


def _key_and_session(sk: SecureKernel, vp: Cpu) -> tuple[bytes, int]:
    raw = vp.read(sk.dump_key_va, KEY_SIZE + 8)
    return raw[:KEY_SIZE], int.from_bytes(raw[KEY_SIZE:], "little")


def secure_pages(sk: SecureKernel, vp: Cpu) -> list[int]:
    """VTL1 pages NT may not read: the SK's own memory and every trustlet's private memory.
    A trustlet's unmodified image pages stay readable by VTL0 (§7) and are not listed."""
    shared: set[int] = set()
    for process in _processes(sk, vp):
        shared.update(process.image_pfns(vp))
    return sorted(pfn for pfn in sk.own_pages(vp) if pfn not in shared)


def _processes(sk: SecureKernel, vp: Cpu) -> list[ium.SecureProcess]:
    """Every secure process the handle table names (read now)."""
    found = (ium.process_at(sk, vp, va) for _, va in objects.entries(sk, vp, ObjectType.SKPROCESS))
    return [p for p in found if isinstance(p, ium.SecureProcess)]


def _given(sk: SecureKernel, vp: Cpu, hibernation: bool) -> set[int]:
    """The pages the SK gives (as ciphertext) for this purpose, read now: every trustlet's private
    pages and page tables for hibernation; for a crash dump, only those of trustlets whose signed
    CrashDump policy allows it."""
    given: set[int] = set()
    for process in _processes(sk, vp):
        if hibernation or process.read(vp, SkProcessLayout.CRASH_DUMP) != 0:
            given.update(process.private_pfns(vp))
            given.update(process.table_pfns(vp))
    return given


def _encrypt(key: bytes, session: int, pfn: int, data: bytes) -> bytes:
    counter = session.to_bytes(8, "little") + pfn.to_bytes(4, "little") + bytes(4)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _prepare(sk: SecureKernel, vp: Cpu, args: SecureCallArgs, hibernation: bool) -> Reply:
    request, target, out_pfn = args.fields[0], args.fields[1], args.fields[2]
    purpose = "hibernation" if hibernation else "crashdump"
    if request == REQUEST_LIST:
        first = out_pfn
        if not sk.vtl0_output_page(vp, target):
            sk.emit(vp, "dump", "securecall.pfn", "refused", pfn=target)
            return Reply(NtStatus.INVALID_PARAMETER)
        pages = secure_pages(sk, vp)
        chunk = pages[first : first + LIST_MAX] if first >= 0 else []
        given = _given(sk, vp, hibernation) if chunk else set()
        entries = (p | ENTRY_GIVEN if p in given else p for p in chunk)
        vp.write(
            sk.space.phys_va(target << PAGE_SHIFT),
            b"".join(e.to_bytes(8, "little") for e in entries).ljust(PAGE_SIZE, b"\0"),
        )
        _, session = _key_and_session(sk, vp)
        if first == 0:
            # VTL0 gets no plaintext of VTL1 memory: ciphertext of trustlet pages, nothing else.
            sk.emit(
                vp, "dump", f"sk.{purpose}", "refused", vtl1_pages=len(pages), given="ciphertext"
            )
        return Reply(NtStatus.SUCCESS, [len(pages), len(chunk), session])
    if request == REQUEST_PAGE:
        if not sk.own_page(vp, target) or not sk.vtl0_output_page(vp, out_pfn):
            sk.emit(vp, "dump", "securecall.pfn", "refused", pfn=target, out_pfn=out_pfn)
            return Reply(NtStatus.INVALID_PARAMETER)
        out_va = sk.space.phys_va(out_pfn << PAGE_SHIFT)
        if target not in _given(sk, vp, hibernation):
            vp.write(out_va, bytes(PAGE_SIZE))
            return Reply(NtStatus.SUCCESS, [PAGE_WITHHELD])
        key, session = _key_and_session(sk, vp)
        plain = vp.read(sk.space.phys_va(target << PAGE_SHIFT), PAGE_SIZE)
        vp.write(out_va, _encrypt(key, session, target, plain))
        return Reply(NtStatus.SUCCESS, [PAGE_ENCRYPTED])
    return Reply(NtStatus.INVALID_PARAMETER)


def prepare_for_crashdump(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    return _prepare(sk, vp, args, hibernation=False)


def prepare_for_hibernation(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    return _prepare(sk, vp, args, hibernation=True)


def register(sk: SecureKernel) -> None:
    provision(sk)
    sk.handlers[Service.PREPARE_FOR_CRASHDUMP] = prepare_for_crashdump
    sk.handlers[Service.PREPARE_FOR_HIBERNATION] = prepare_for_hibernation
