"""A1, A2, A4, A10: VTL0 ring 0 against the VTL boundary itself (vbs-internals §6)."""

from __future__ import annotations

from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import nt_of
from vbsim.attacks.context import AttackContext
from vbsim.attacks.goals import loot_contains, vtl0_rights
from vbsim.attacks.model import Capability, Outcome, Scenario
from vbsim.guest import hvcall
from vbsim.hv.defs import HvRegisterName
from vbsim.hw.cpu import Cpu
from vbsim.hw.pagetable import PageTables
from vbsim.hw.x86 import Cr4, Msr, Pte
from vbsim.policy import Policy
from vbsim.sk import callargs
from vbsim.sk.callargs import SecureCallArgs

B, S, N = Outcome.BLOCKED, Outcome.SUCCEEDED, Outcome.NOT_APPLICABLE
VBS_ONLY = {"vbs-off": N, "vbs": B, "vbs-hvci": B, "hardened": B, "legacy-2019": B}
#: An unused kernel VA the attacker maps its window at.
WINDOW_VA = 0xFFFF_F8A0_0000_0000


def needs_vbs(policy: Policy) -> bool:
    return policy.vbs


def _sk_key_page(ctx: AttackContext) -> tuple[int, bytes]:
    """The GPA of the Secure Kernel page holding the VSM master keys, and its bytes (host view)."""
    sk = ctx.booted.sk
    assert sk is not None and ctx.system is not None and ctx.system.machine is not None
    from vbsim.invariants.skstate import host_gpa

    gpa = host_gpa(ctx.system.machine.ram, sk, sk.keys_va)  # a debugger's walk of the SK's tables
    assert gpa is not None
    return gpa, ctx.system.machine.ram.read(gpa, 96)


# -- A1 --------------------------------------------------------------------------------------------
def _map_and_copy(cpu: Cpu, root: int, target_gpa: int, loot_va: int) -> None:
    """K0: write a PTE in NT's own tables that maps the target GPA, then copy through it."""
    nt = nt_of(cpu)
    tables = PageTables(nt.phys(cpu), root=root)
    tables.map(WINDOW_VA, target_gpa, int(Pte.RW | Pte.NX))
    cpu.invlpg(WINDOW_VA)
    data = cpu.read(WINDOW_VA, 96)
    cpu.write(loot_va, data)
    cpu.write(WINDOW_VA, b"\xcc" * 16)


def a1_steps(ctx: AttackContext) -> None:
    target_gpa, secret = _sk_key_page(ctx)
    ctx.notes["secret"] = secret
    ctx.notes["target_gpa"] = target_gpa
    loot_va, loot_gpa = ctx.kernel_page()
    ctx.notes["loot_gpa"] = loot_gpa
    nt = ctx.booted.nt
    assert nt is not None
    ctx.kernel(_map_and_copy, nt.space.root, target_gpa, loot_va)


def a1_goal(ctx: AttackContext) -> bool:
    secret = ctx.notes.get("secret", b"")
    if loot_contains(ctx, secret):
        return True
    machine = ctx.system.machine if ctx.system else None
    target = ctx.notes.get("target_gpa")
    return bool(machine and target is not None and machine.ram.read(target, 16) == b"\xcc" * 16)


A1 = Scenario(
    id="A1",
    title="Read/write VTL1 memory by mapping its GPA",
    source="WI7-P2 ch9; TLFS 'Memory Access Protections'",
    capability=Capability.K0,
    goal="the Secure Kernel's VSM keys reach attacker memory, or SK memory changes",
    expected=VBS_ONLY,
    expected_why="VTL0's SLAT has no access to VTL1 pages after PHASE3_INIT; the violation is a "
    "secure intercept, never data (holds by design, no public bypass)",
    steps=a1_steps,
    goal_met=a1_goal,
    applicable=needs_vbs,
)


# -- A2 --------------------------------------------------------------------------------------------
def _reconfigure(
    cpu: Cpu, in_va: int, in_gpa: int, out_va: int, out_gpa: int, target_pfn: int
) -> None:
    pages = hvcall.ParamPages(in_va, in_gpa, out_va, out_gpa)
    hvcall.modify_vtl_protection_mask(cpu, pages, [target_pfn], 0xF, target_vtl=1)
    hvcall.modify_vtl_protection_mask(cpu, pages, [target_pfn], 0xF)
    hvcall.set_vp_registers(cpu, pages, [(HvRegisterName.VSM_PARTITION_CONFIG, 0)], target_vtl=1)
    hvcall.set_vp_registers(cpu, pages, [(HvRegisterName.VSM_VP_SECURE_CONFIG_VTL0, 0)])
    hvcall.hypercall(cpu, pages, 0x000E, bytes(16))  # HvCallDisablePartitionVtl


def a2_steps(ctx: AttackContext) -> None:
    sk = ctx.booted.sk
    assert sk is not None
    target_pfn = sorted(set(sk.image_pfns))[0]
    ctx.notes["target_pfn"] = target_pfn
    ctx.notes["rights_before"] = vtl0_rights(ctx, [target_pfn])
    hv = ctx.booted.machine.hv if ctx.booted.machine else None
    ctx.notes["config_before"] = dict(hv.partition.config) if hv else {}
    in_va, in_gpa = ctx.kernel_page()
    out_va, out_gpa = ctx.kernel_page()
    ctx.kernel(_reconfigure, in_va, in_gpa, out_va, out_gpa, target_pfn)


def a2_goal(ctx: AttackContext) -> bool:
    if ctx.system is None or ctx.system.machine is None or ctx.system.machine.hv is None:
        return False
    changed_rights = vtl0_rights(ctx, [ctx.notes["target_pfn"]]) != ctx.notes["rights_before"]
    changed_config = dict(ctx.system.machine.hv.partition.config) != ctx.notes["config_before"]
    return bool(changed_rights or changed_config)


A2 = Scenario(
    id="A2",
    title="Change SLAT or VSM configuration from VTL0",
    source="TLFS 'VTL protections', 'HvRegisterVsmPartitionConfig'; WI7-P2",
    capability=Capability.K0,
    goal="a VTL0 SLAT right or VTL1's VSM configuration changes",
    expected=VBS_ONLY,
    expected_why="a VTL cannot set protections for itself or configure a higher VTL: the "
    "hypervisor refuses (ACCESS_DENIED / INVALID_PARAMETER), no crash",
    steps=a2_steps,
    goal_met=a2_goal,
    applicable=needs_vbs,
)


# -- A4 --------------------------------------------------------------------------------------------
HOOK = 0xFFFF_F800_DEAD_0000


def _tamper(cpu: Cpu) -> None:
    cpu.mov_to_cr(4, cpu.read_cr(4) & ~int(Cr4.SMEP))
    cpu.wrmsr(Msr.LSTAR, HOOK)
    cpu.lidt(HOOK, 0xFFF)


def a4_steps(ctx: AttackContext) -> None:
    bank = ctx.vp.banks[0]  # host side: the debugger's view of VTL0's registers
    assert bank is not None
    ctx.notes["before"] = (bank.cr4, bank.lstar, bank.idtr_base)
    ctx.kernel(_tamper)


def a4_goal(ctx: AttackContext) -> bool:
    if ctx.system is None or ctx.system.machine is None:
        return False
    bank = ctx.system.machine.bsp.banks[0]
    assert bank is not None
    return not bank.cr4 & Cr4.SMEP or bank.lstar == HOOK or bank.idtr_base == HOOK


A4 = Scenario(
    id="A4",
    title="Clear CR4.SMEP, hook LSTAR, replace the IDT",
    source="WI7-P2 (HyperGuard); Amossys part 1; Shafir, 'HyperGuard' parts 1-3 (2022)",
    capability=Capability.K0,
    goal="CR4.SMEP cleared, LSTAR or IDTR redirected in VTL0",
    expected={"vbs-off": S, "vbs": B, "vbs-hvci": B, "hardened": B, "legacy-2019": B},
    expected_why="HyperGuard intercepts CR/MSR/descriptor-table writes and bugchecks "
    "(HYPERGUARD_VIOLATION); it runs on every VBS preset, legacy-2019 included (WI7-P2: part of "
    "the Secure Kernel's PHASE3 start; Shafir 2022: NT's MSR/CR extents, intercepts installed "
    "on every processor; Amar & King 2020 met it on the 2019 SK). Without VBS nothing watches "
    "them. The outcome follows policy.hyperguard, not VBS as such: switched off, the same "
    "writes land.",
    steps=a4_steps,
    goal_met=a4_goal,
)


# -- A10 -------------------------------------------------------------------------------------------
def _unknown_sscn(cpu: Cpu) -> None:
    nt = nt_of(cpu)
    assert nt.vsl is not None
    nt.vsl.call_raw(cpu, SecureCallArgs(callargs.OP_INVOKE_SERVICE, 0x7777, 0, []))


def a10_goal(ctx: AttackContext) -> bool:
    """The Secure Kernel stopped the machine: the hypervisor recorded a crash notified from VTL1
    (vbsim.hv.crash).  A VTL0 kernel can always stop itself; that is not this attack."""
    return any(crash.vtl == 1 for crash in ctx.crashes)


A10 = Scenario(
    id="A10",
    title="Unknown secure-call number (denial of service)",
    source="McGarr, 'Secure Calls' (2025): 'the machine will crash'",
    capability=Capability.K0,
    goal="the Secure Kernel stops the machine (a crash the hypervisor records from VTL1)",
    expected={"vbs-off": N, "vbs": S, "vbs-hvci": S, "hardened": S, "legacy-2019": S},
    expected_why="by design: the Secure Kernel bugchecks on an unknown SSCN; VTL0 can always "
    "deny service",
    steps=lambda ctx: ctx.kernel(_unknown_sscn),
    goal_met=a10_goal,
    applicable=needs_vbs,
)

SCENARIOS = [A1, A2, A4, A10]
