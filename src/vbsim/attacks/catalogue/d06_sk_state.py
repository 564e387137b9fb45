"""D6: the Secure Kernel's state from VTL0 — a data-only attack on HVCI's page-state table.

Issue 10 part 3.  A K0 attacker knows (as symbols or a memory scan give it) the GPA of the SK's
HVCI page-state table (``vbsim.sk.layouts.Hvci``: one byte per GPA page, vbs-internals §5.1 and
Appendix A item 5).  It maps that GPA with a PTE in NT's own page tables and writes the byte of a
page it owns, marking it VALIDATED — the state that would let the page keep KX through HVCI's
transitions.  Its own page tables let it; the decision is SLAT's: the SK made its memory
inaccessible to VTL0 at PHASE3_INIT (vbs-internals §1.1 row 13, §1.3 "SK image and SK memory:
No access after PHASE3_INIT"; vsm-spec §3.2: an access a higher VTL's protection forbids is a
violation the lower VTL cannot complete).  Without VBS there is no SK and no table.

Goal, judged in RAM (host side): the byte in the table changed to the attacker's value, and
HVCI's next decision about that page (MAKE_PROTECTED_PAGE_WRITABLE, which the SK answers from
the page's state) is the one the forged state dictates.
"""

from __future__ import annotations

from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import needs_vbs, nt_of
from vbsim.attacks.context import AttackContext
from vbsim.attacks.model import Capability, Outcome, Scenario
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.cpu import Cpu
from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.x86 import PAGE_SHIFT, Pte
from vbsim.ntstatus import NtStatus
from vbsim.sk.layouts import host_hash_records
from vbsim.sk.services.hvci import PageState
from vbsim.sk.sscn import Service

B, S, N = Outcome.BLOCKED, Outcome.SUCCEEDED, Outcome.NOT_APPLICABLE
#: An unused kernel VA the attacker maps the table at.
WINDOW_VA = 0xFFFF_F8A2_0000_0000
#: What the attacker writes for its page: the state HVCI gives pages it validated.
FORGED_STATE = int(PageState.VALIDATED)


def _tables(vp: Cpu, root: int, spare: list[int]) -> PageTables:
    """NT's page tables, edited through the attacker's own direct map; new table frames come
    from pages the attacker already holds (``spare``, zeroed)."""
    return PageTables(
        PhysAccess(
            lambda gpa: vp.read_u64(DIRECT_MAP + gpa),
            lambda gpa, value: vp.write_u64(DIRECT_MAP + gpa, value),
            spare.pop,
        ),
        root=root,
    )


def _forge(vp: Cpu, root: int, table_gpa: int, own_pfn: int, spare: list[int]) -> int:
    """K0: map the table's page at the window, write the forged state of ``own_pfn``, and ask
    HVCI about the page.  Returns the status of that next decision."""
    entry_gpa = table_gpa + own_pfn
    page_gpa = entry_gpa & ~0xFFF
    tables = _tables(vp, root, spare)
    tables.map(WINDOW_VA, page_gpa, int(Pte.RW | Pte.NX))
    vp.invlpg(WINDOW_VA)
    vp.write(WINDOW_VA + (entry_gpa & 0xFFF), bytes([FORGED_STATE]))
    nt = nt_of(vp)
    assert nt.vsl is not None
    status, _ = nt.vsl.call(vp, Service.MAKE_PROTECTED_PAGE_WRITABLE, own_pfn)
    return int(status)


def d6_steps(ctx: AttackContext) -> None:
    sk, nt = ctx.booted.sk, ctx.booted.nt
    assert sk is not None and nt is not None
    _, own_gpa = ctx.kernel_page()
    own_pfn = own_gpa >> PAGE_SHIFT
    table_gpa = int(sk.hvci.states_gpa)
    ctx.notes.update(table_gpa=table_gpa, own_pfn=own_pfn, before=_byte(ctx, table_gpa + own_pfn))
    spare = [ctx.kernel_page()[1] >> PAGE_SHIFT for _ in range(3)]  # window table frames
    status = ctx.kernel(_forge, nt.space.root, table_gpa, own_pfn, spare)
    if isinstance(status, int):
        ctx.notes["next_decision"] = NtStatus.name_of(status)


def _byte(ctx: AttackContext, gpa: int) -> int:
    machine = ctx.system.machine if ctx.system else None
    return -1 if machine is None else machine.ram.read(gpa, 1)[0]


def d6_goal(ctx: AttackContext) -> bool:
    """The table byte (RAM, host side) is the attacker's doing and HVCI's next decision about
    the page followed it.  Both are read from the SK's memory, not from what the payload
    reports: MAKE_PROTECTED_PAGE_WRITABLE accepts only a VALIDATED page and records its
    decision by moving the page on to WRITABLE, a state an ordinary VTL0 page (the attacker's,
    UNVALIDATED before the attack) never reaches otherwise."""
    gpa = ctx.notes.get("table_gpa")
    pfn = ctx.notes.get("own_pfn")
    if not isinstance(gpa, int) or not isinstance(pfn, int):
        return False
    before = ctx.notes.get("before")
    if before == PageState.WRITABLE or _byte(ctx, gpa + pfn) != PageState.WRITABLE:
        return False
    # WRITABLE by the SK's own rules needs a page it validated, and SKCI keeps a hash record
    # for every page it validates: a record for the page means HVCI's sanctioned path (a signed
    # image's page recycled to the attacker, which a fourth audit used), not the forged byte.
    sk, machine = ctx.booted.sk, ctx.booted.machine
    if sk is None or machine is None:
        return False
    return pfn not in host_hash_records(machine.ram, int(sk.hvci.hashes_gpa))


D6 = Scenario(
    id="D6",
    title="Write the Secure Kernel's HVCI page-state table from VTL0 ring 0",
    source="issue 10 part 3; vbs-internals §1.1 row 13, §1.3, §5.1, App. A item 5; vsm-spec §3.2",
    capability=Capability.K0,
    goal="the SK's page-state table (VTL1 memory) holds the attacker's state for its page, and "
    "HVCI's next decision about that page follows it",
    expected={"vbs-off": N, "vbs": B, "vbs-hvci": B, "hardened": B, "legacy-2019": B},
    expected_why="the SK's memory, its HVCI tables included, has no VTL0 access in SLAT from "
    "PHASE3_INIT on (vbs-internals §1.1 row 13, §1.3); VTL0's own page tables can name the GPA "
    "but SLAT refuses the write (vsm-spec §3.2).  No legacy switch changes this: the 2019 bugs "
    "were in secure-call parameter handling (A8, A9), not in SLAT.  Without VBS there is no "
    "Secure Kernel.",
    steps=d6_steps,
    goal_met=d6_goal,
    applicable=needs_vbs,
)

SCENARIOS = [D6]
