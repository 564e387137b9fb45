"""Boot: every step of vbs-internals §1.1, in order, each one a trace event.

1. Firmware Secure Boot verifies the boot components' signatures and (SkuSiPolicy) versions.
2. winload reads the VBS policy: the UEFI variable when UEFI-locked, else the registry.
3. The hypervisor is launched (a machine *with* SLAT and VTLs) — or not, with VBS off.
4. The Secure Kernel image is loaded into reserved memory; its entry, still in VTL0, enables VTL1
   for the partition and the boot VP and VTL-calls into VTL1.
5. Phase 1 in VTL1: the SK protects its pages, registers HyperGuard intercepts, initialises code
   integrity; VTL return.
6. NT phase 0; PHASE3_INIT (SK pages become inaccessible).
7. NT phase 1: PHASE4_INIT (the SK stops trusting VTL0); application processors start through
   START_PROCESSOR and HvCallStartVirtualProcessor.
With ``Mandatory``, a Secure Kernel that fails verification stops the boot; without it, the boot
continues without VBS (the Downdate lesson, vbs-internals §1.4, §6 A16).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vbsim.boot.disk import COMPONENT_KINDS, VBS_EFI_VARIABLE, VBS_REGISTRY_KEY, Disk
from vbsim.boot.kernel_space import KernelSpace
from vbsim.boot.logon import DEFAULT_LOGON, Logon, type_logon
from vbsim.boot.sk_loader import load_secure_kernel
from vbsim.guest import hvcall
from vbsim.hv import defs
from vbsim.hw import code
from vbsim.hw.faults import GuestTermination
from vbsim.hw.vp import VirtualProcessor
from vbsim.image import ComponentFloor, RevocationPolicy, model_pki, requirement_for, verify_image
from vbsim.machine import Machine
from vbsim.nt.kernel import NtKernel
from vbsim.nt.layouts import HostKernelView
from vbsim.nt.process import Process, ProcessView, find_process, host_processes, process_at
from vbsim.policy import Policy
from vbsim.sk.kernel import SecureKernel
from vbsim.sk.layouts import Pool, table_pages
from vbsim.trace import Trace

#: Frames the boot loader reserves for the Secure Kernel's own pool (``vbsim.sk.layouts.Pool``).
SK_POOL_FRAMES = Pool.FRAMES
#: Frames the host allocator keeps back from NT's region (see nt_region_start): the loader's
#: late boot-time allocations (the SK's image, its boot-time tables and data, the hypercall
#: parameter pages of OslVsmSetup) and a debugger's code pages (``KernelSpace.install`` after
#: boot, host tools only: guest code never allocates from it).  After boot nothing else takes
#: host frames: attackers allocate through NT (its PFN database) or the SK (its pool), and the
#: memory map shows the untouched rest as "unused".
HOST_RESERVE_FRAMES = 8192


@dataclass
class System:
    """A booted (or halted) machine."""

    policy: Policy
    disk: Disk
    trace: Trace
    machine: Machine | None = None
    nt: NtKernel | None = None
    #: The loader's side of NT's address space (host side: tools that plant code after boot).
    nt_space: KernelSpace | None = None
    sk: SecureKernel | None = None
    #: The loader's side of the SK's address space (host side: its frames, its page tables for
    #: a debugger's walk, tools that plant code after boot); the SK keeps only its KernelMap.
    sk_space: KernelSpace | None = None
    vbs_running: bool = False
    halted: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def booted(self) -> bool:
        return self.halted is None and self.nt is not None

    # -- what NT's memory says now (host side: a debugger's view of VTL0 RAM) ------------------
    def process_views(self) -> list[ProcessView]:
        """``!process 0 0``: every EPROCESS on PsActiveProcessHead's list in RAM, in list
        order.  A process a rootkit unlinked is not here, as it is not in a debugger's list."""
        if self.nt is None or self.machine is None:
            return []
        head = self.nt.variables["PsActiveProcessHead"]
        return host_processes(self.machine.ram, head.va, head.gpa)

    def processes(self) -> dict[int, Process]:
        """References to the processes on the list now, by the PID RAM holds."""
        if self.nt is None or self.machine is None:
            return {}
        kernel = HostKernelView(self.machine.ram, self.nt.space.root)
        return {view.pid: process_at(kernel, view.eprocess) for view in self.process_views()}

    def lookup_process(self, pid: int) -> Process | None:
        """What PsLookupProcessByProcessId would return for ``pid`` now: PspCidTable's entry,
        read from RAM (a process unlinked from the list is still found)."""
        if self.nt is None or self.machine is None:
            return None
        kernel = HostKernelView(self.machine.ram, self.nt.space.root)
        return find_process(kernel, self.nt.cid_table_pointer, pid)

    def process(self, pid: int) -> Process:
        """The listed process with ``pid`` (KeyError when none is)."""
        return self.processes()[pid]

    def modules(self) -> list[str]:
        """``lm``: the drivers on PsLoadedModuleList in RAM, in load order."""
        if self.nt is None or self.machine is None:
            return []
        from vbsim.nt.drivers import host_modules

        return host_modules(self.machine.ram, self.nt)


def revocation_of(policy: Policy) -> RevocationPolicy | None:
    if not policy.revocation:
        return None
    floors = {}
    for name, floor in policy.revocation.items():
        version = None
        if floor.min_version is not None:
            parts = [int(p) for p in floor.min_version.split(".")] + [0, 0, 0]
            version = (parts[0], parts[1], parts[2], parts[3])
        floors[name] = ComponentFloor(min_version=version, min_svn=floor.min_svn)
    return RevocationPolicy(components=floors)


def _step(system: System, mechanism: str, outcome: str, **detail: Any) -> None:
    system.steps.append({"step": mechanism, "outcome": outcome, **detail})
    system.trace.emit(
        "boot", mechanism, outcome, actor="firmware" if system.machine is None else "boot", **detail
    )


def verify_component(system: System, name: str) -> bool:
    """Secure Boot / winload image check: signature, chain, signing level, revocation."""
    data = system.disk.image(name)
    kind, _ = COMPONENT_KINDS[name]
    result = verify_image(
        data,
        model_pki().trust_store(),
        requirement=requirement_for(kind),
        revocation=revocation_of(system.policy),
    )
    version = str(result.image.version) if result.image and result.image.version else None
    if result.ok:
        _step(system, "secureboot", "verified", component=name, version=version)
        return True
    mechanism = (
        "revocation"
        if result.revocation is not None and result.revocation.revoked
        else "secureboot"
    )
    _step(
        system,
        mechanism,
        "rejected",
        component=name,
        version=version,
        failure=str(result.failure),
        detail=result.detail,
    )
    return False


def vbs_requested(system: System) -> bool:
    """OslSetVsmPolicy: a UEFI-locked setting wins over the registry (vbs-internals §1.1 row 3)."""
    disk = system.disk
    if VBS_EFI_VARIABLE in disk.efi_variables:
        value, source = disk.efi_variables[VBS_EFI_VARIABLE], "uefi-variable"
        registry = disk.registry.get(VBS_REGISTRY_KEY)
        if registry is not None and bool(registry) != bool(value):
            _step(system, "uefi-lock", "overridden", registry=registry, uefi_variable=value)
    else:
        value, source = disk.registry.get(VBS_REGISTRY_KEY, int(system.policy.vbs)), "registry"
    _step(system, "vsm-policy", "vbs-on" if value else "vbs-off", source=source)
    return bool(value)


def boot(
    policy: Policy, disk: Disk | None = None, trace: Trace | None = None, logon: Logon | None = None
) -> System:
    """Boot ``policy``'s machine from ``disk``; ``logon`` is what the user types at winlogon
    (:data:`vbsim.boot.logon.DEFAULT_LOGON` unless given).  The loaders link each kernel's
    routines to this boot's code inside :func:`vbsim.hw.code.linking`; once boot returns, a
    routine's name keeps its code."""
    with code.linking():
        return _boot(policy, disk, trace, logon)


def _boot(policy: Policy, disk: Disk | None, trace: Trace | None, logon: Logon | None) -> System:
    system = System(
        policy,
        disk if disk is not None else Disk.install(policy),
        trace if trace is not None else Trace(record=True),
    )
    _step(system, "firmware", "secure-boot-on" if policy.secure_boot else "secure-boot-off")
    # §1.1 order: VBS policy (row 3), hypervisor loader (row 5), kernel images (row 6), SK (row 8).
    want_vbs = vbs_requested(system)
    hypervisor_ok = verify_component(system, "hvix64.exe") if want_vbs else False
    if not verify_component(system, "ntoskrnl.exe"):
        system.halted = "ntoskrnl.exe failed verification"
        _step(system, "boot", "halted", reason=system.halted)
        return system
    vbs = False
    if want_vbs:
        vbs = hypervisor_ok and verify_component(system, "securekernel.exe")
        if not vbs:
            if policy.mandatory:
                system.halted = "VBS is mandatory and a VBS component failed verification"
                _step(system, "mandatory", "halted", reason=system.halted)
                return system
            _step(system, "mandatory", "continue-without-vbs")
    machine = Machine(
        ram_size=policy.ram_mib << 20,
        vps=policy.vps,
        hypervisor=vbs,
        trace=system.trace,
        kernel_dma_protection=policy.kernel_dma_protection,
        entropy_seed=policy.entropy_seed,
    )
    system.machine = machine
    _step(system, "hypervisor-launch", "launched" if vbs else "not-launched")
    # The loader reserves the Secure Kernel's physical memory before NT sees the memory map, so
    # NT never owns (or hands out) those frames; the SK manages them itself (issue 10).
    sk_pool = (
        (machine.ram.frames.alloc_contiguous(SK_POOL_FRAMES, "securekernel.pool"), SK_POOL_FRAMES)
        if vbs
        else None
    )
    # The memory map NT gets: a region at the top of RAM is NT's to manage (its PFN database);
    # what the loader handed out below it (NT's image, the SK's pool and image) and the loader's
    # reserve (HOST_RESERVE_FRAMES) are not.
    nt, nt_space = load_nt(machine, policy.build, vbs, system.disk.drivers)
    system.nt_space = nt_space
    from vbsim.nt.registry import HVCI_KEY, LSA_CFG_FLAGS_KEY, load_hive

    # The SYSTEM hive from disk, with the feature configuration the policy installed: the
    # policy is configuration, and only decides what is written here; NT decides from the hive.
    configured = {HVCI_KEY: int(policy.hvci), LSA_CFG_FLAGS_KEY: lsa_cfg_flags(policy)}
    load_hive(machine.ram, nt.hive_gpa, {**configured, **system.disk.registry})
    system.nt = nt
    # The user at winlogon: the logon reaches the machine as bytes in NT's logon buffer, which
    # lsass reads when it starts at the end of phase 1 (vbsim.boot.logon).
    type_logon(machine.ram, nt, logon if logon is not None else DEFAULT_LOGON)
    bsp = machine.bsp
    _prepare_boot_processor(nt_space, nt, bsp)
    try:
        if vbs:
            sk, sk_space = load_secure_kernel(machine, policy, sk_pool, revocation_of(policy))
            system.sk = sk
            system.sk_space = sk_space
            _step(system, "sk-load", "loaded", frames=len(sk.image_pfns))
            _enter_secure_kernel(system, sk, nt)
        if vbs:
            # The trustlets installed on disk; wininit starts those whose feature the hive in
            # RAM enables (LsaIso: Credential Guard; vbs-internals §1.1 row 16, §5.3).
            from vbsim.boot.disk import TRUSTLET_IMAGES

            nt.boot_trustlets = {
                name: (tid, system.disk.trustlet(name)) for name, tid in TRUSTLET_IMAGES.items()
            }
        nt.phase0(bsp.cpu)
        if not vbs:
            _start_application_processors(system, nt_space, nt)
        nt.phase1(bsp.cpu)
        if vbs and credential_guard_configured(system):
            _step(
                system,
                "credential-guard",
                "running" if lsaiso_port(system) else "not-running",
            )
    except GuestTermination as stop:
        system.halted = f"boot stopped: {stop}"
        _step(system, "boot", "halted", reason=system.halted)
        return system
    system.vbs_running = vbs
    _step(system, "boot", "complete", vbs=vbs, processors=sum(1 for v in machine.vps if v.started))
    return system


def lsa_cfg_flags(policy: Policy) -> int:
    """The LsaCfgFlags value the policy installs (vbsim.nt.registry: 1 enabled with UEFI lock, 2
    enabled without lock, 0 disabled)."""
    from vbsim.nt import registry

    if not policy.credential_guard:
        return registry.LSA_CFG_DISABLED
    if policy.uefi_lock:
        return registry.LSA_CFG_ENABLED_WITH_UEFI_LOCK
    return registry.LSA_CFG_ENABLED_WITHOUT_LOCK


def credential_guard_configured(system: System) -> bool:
    """Whether the running system's hive enables Credential Guard (host side: RAM now)."""
    from vbsim.nt import registry

    value = system_values(system).get(registry.LSA_CFG_FLAGS_KEY)
    return value in (registry.LSA_CFG_ENABLED_WITH_UEFI_LOCK, registry.LSA_CFG_ENABLED_WITHOUT_LOCK)


def lsaiso_port(system: System) -> int:
    """LsaIso's port (PID) as NT's ``AlpcLsaIsoPort`` in RAM holds it now (host side; 0: none)."""
    from vbsim.nt.secure_process import LSAISO_PORT

    if system.nt is None or system.machine is None:
        return 0
    variable = system.nt.variables.get(LSAISO_PORT)
    return system.machine.ram.read_u64(variable.gpa) if variable is not None else 0


def system_values(system: System) -> dict[str, int]:
    """The running system's SYSTEM hive as RAM holds it (host side, a debugger's read)."""
    from vbsim.nt.registry import host_values

    if system.nt is None or system.machine is None:
        return {}
    return host_values(system.machine.ram, system.nt.hive_gpa)


def load_nt(
    machine: Machine, build: str, vbs: bool, drivers: Mapping[str, bytes] | None = None
) -> tuple[NtKernel, KernelSpace]:
    """winload loading ntoskrnl: NT's address space (the loader's side, kept host side), its
    image, the memory map's region NT manages from then on (the host allocator stops below
    it), and the system disk's driver store as NT's file system presents it (none: empty)."""
    first_free = nt_region_start(machine)
    machine.ram.frames.limit = first_free
    space = KernelSpace(machine.ram, "ntoskrnl")
    nt = NtKernel(
        build,
        vbs,
        space,
        len(machine.vps),
        first_free,
        machine.ram.pages,
        driver_store=dict(drivers or {}),
    )
    return nt, space


def nt_region_start(machine: Machine) -> int:
    """The first PFN of the region NT manages: everything above the host allocator's use so
    far and its reserve (a quarter of RAM, at most HOST_RESERVE_FRAMES)."""
    from vbsim.nt import pfn

    frames = machine.ram.frames
    # NT's PFN database is one entry per page of RAM and winload builds it from this reserve
    # before NT takes over: on a large machine (16 GiB: 4 Mi pages) it alone outgrows the fixed
    # part, so the reserve grows with it (found by `vbsim boot --ram-mib 16384`: OutOfFrames).
    # The same holds for HVCI's two one-byte-per-page tables in SK memory (state and rights,
    # ``sk.services.hvci.allocate``): at 64 GiB (16 Mi pages) they need 8,192 frames of their
    # own (found by `vbsim soak --ram-mib 65536`: OutOfFrames).
    pages = machine.ram.pages
    reserve = (
        min(HOST_RESERVE_FRAMES, pages // 4) + pfn.database_pages(pages) + 2 * table_pages(pages)
    )
    return min(machine.ram.pages, frames._next + reserve)


def _prepare_boot_processor(space: KernelSpace, nt: NtKernel, vp: VirtualProcessor) -> None:
    """winload hands the BSP to NT: CR3 = the kernel's tables, GS base = NT's block."""
    bank = space.initial_state(0)
    bank.gs_base = nt.processor_block(vp.index)
    bank.actor = "nt"
    vp.banks[0] = None
    vp.enable_vtl(0, bank)
    vp.switch_vtl(0)


def _start_application_processors(system: System, space: KernelSpace, nt: NtKernel) -> None:
    """Without a hypervisor NT starts the APs with INIT-SIPI.  The model's APIC delivers only
    fixed interrupts, so the platform performs the INIT-SIPI sequence here, host side: each AP
    starts in long mode at NT's KiSystemStartupAp with NT's CR3 and GS base (what the
    trampoline NT's SIPI vector points to would set up)."""
    machine = system.machine
    assert machine is not None
    for ap in machine.vps[1:]:
        state = space.initial_state(nt.ap_entry)
        state.gs_base = nt.processor_block(ap.index)
        state.actor = "nt"
        ap.banks[0] = None
        ap.enable_vtl(0, state)
        ap.switch_vtl(0)
        ap.started = True
        if system.trace.on:
            machine.bsp.emit("nt", "init-sipi", "started", ap=ap.index)
        ap.call(nt.ap_entry)


def _enter_secure_kernel(system: System, sk: SecureKernel, nt: NtKernel) -> None:
    """OslVsmSetup(2): the SK entry, still in VTL0, enables VTL1 and VTL-calls into it
    (vbs-internals §1.1 row 11; vsm-spec §5.1 steps 1-5)."""
    vp = system.machine.bsp if system.machine else None
    assert vp is not None and nt.vsl is not None
    nt.vsl.enable_hypercalls(vp.cpu)
    assert system.nt_space is not None
    params = hvcall.ParamPages(*system.nt_space.alloc_data(), *system.nt_space.alloc_data())
    # Without hardware MBEC, HVCI has the hypervisor emulate it ("Restricted User Mode", two
    # SLATs, vbs-internals §0): functionally the same separation of user and kernel execute.
    emulated = system.policy.hvci and not system.policy.mbec
    flags = int(defs.HvEnablePartitionVtlFlags.ENABLE_MBEC) if system.policy.mbec or emulated else 0
    if emulated:
        _step(system, "restricted-user-mode", "emulating-mbec")
    if system.policy.hvpt:
        # HVPT through hvdef's surface (issue 11 item 8): EnablePartitionVtlFlags
        # .enable_hardware_hvpt, only where HvRegisterVsmCapabilities.hardware_hvpt_available.
        got, caps = hvcall.get_vp_registers(
            vp.cpu, params, [int(defs.HvRegisterName.VSM_CAPABILITIES)]
        )
        if got.ok and caps and defs.CAP_HW_HVPT_AVAILABLE.extract(caps[0]):
            flags |= int(defs.HvEnablePartitionVtlFlags.ENABLE_HARDWARE_HVPT)
        else:
            _step(system, "hardware-hvpt", "unavailable")
    result = hvcall.enable_partition_vtl(vp.cpu, params, 1, flags)
    _step(system, "enable-partition-vtl", result.status_name.lower())
    result = hvcall.enable_vp_vtl(vp.cpu, params, 1, sk.context())
    _step(system, "enable-vp-vtl", result.status_name.lower())
    hvcall.vtl_call(vp.cpu)  # phase 1 runs in VTL1 and returns
    _step(system, "sk-returned", sk.host_phase(system.machine.ram).value if system.machine else "?")
