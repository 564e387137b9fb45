"""A bare partition: a minimal VTL0 kernel and a minimal VTL1 monitor, for ``vbsim machine`` and
for exercising the hypervisor without the full NT / Secure Kernel stack.

The VTL0 kernel enables VTL1 the way LVBS's ``hv_vsm_boot.c`` does (vsm-spec §5.1): guest OS ID,
hypercall page, EnablePartitionVtl, EnableVpVtl with the monitor's initial context, first VtlCall.
The monitor then does what LVBS's ``mshv_vsm_vtl1.c`` does: VP assist page, hypercall page,
SynIC SINT0 for intercepts, VsmPartitionConfig (EnableVtlProtection, default mask 0xF), and it
takes its own frames away from VTL0.  After that VTL0 calls it with a function ID in RDI and
arguments in RSI/RDX (LVBS's VTL-call ABI, status back in R8):

- ``MON_NULL`` (0): nothing (the round-trip benchmark);
- ``MON_PROTECT`` (1): ModifyVtlProtectionMask(page of RSI, flags RDX) for VTL0;
- ``MON_LOCK_CRS`` (2): intercept VTL0 writes to CR0/CR4 (mask in RSI) and LSTAR.

Its SINT0 handler records each intercept message in its log page and, as LVBS does for GPA
intercepts, injects #GP into VTL0 through PendingEvent0.  The VTL0 kernel's exception handlers
record the exception and end the faulting flow.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vbsim.boot.kernel_space import KernelSpace
from vbsim.guest import hvcall
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hv import defs
from vbsim.hv.calls.context import encode_context
from vbsim.hv.defs import HvMapGpaFlags, HvMsr, HvRegisterName, HvStatus, HvVtlEntryReason
from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.hw.faults import ThreadTerminated
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SHIFT, Msr, Vector
from vbsim.machine import Machine

MON_NULL, MON_PROTECT, MON_LOCK_CRS = 0, 1, 2
#: Status codes the monitor returns in R8 (NTSTATUS-like: 0 success).
MON_OK, MON_FAILED, MON_UNKNOWN = 0, 0xC000_0001, 0xC000_0002
SINT0_VECTOR = 0x30
GUEST_OS_ID = 0x8100_0A00_0000_4A61  # "open source" bit 63 plus an arbitrary version
#: A log record: message type u32, access u8, vtl u8, pad u16, GPA u64, GVA u64, value u64.
LOG_RECORD = struct.Struct("<IBBHQQQ")
LOG_CAPACITY = (4096 - 8) // LOG_RECORD.size


@dataclass
class ExceptionRecord:
    vtl: int
    cpl: int
    vector: int
    error_code: int
    cr2: int


@dataclass
class BareKernel:
    """The VTL0 side."""

    space: KernelSpace
    params: hvcall.ParamPages
    #: The page the kernel asks the hypervisor to put its hypercall code in (vsm-spec §1.1).
    hypercall_gpa: int
    exceptions: list[ExceptionRecord] = field(default_factory=list)

    @classmethod
    def load(cls, machine: Machine) -> BareKernel:
        space = KernelSpace(machine.ram, "bare-vtl0")
        in_va, in_gpa = space.alloc_data()
        out_va, out_gpa = space.alloc_data()
        _, hypercall_gpa = space.alloc_data()
        kernel = cls(space, hvcall.ParamPages(in_va, in_gpa, out_va, out_gpa), hypercall_gpa)
        idt = space.build_idt({}, default="bare0.exception")
        block_va, _ = space.alloc_data()  # its processor block: what GS base designates
        machine.ram.place_image(0, block_va, kernel)
        for vp in machine.vps:
            bank = vp.banks[0]
            assert bank is not None
            state = space.initial_state(0, idt=idt)
            state.gs_base = block_va
            vp.banks[0] = None
            vp.enable_vtl(0, state)
            vp.switch_vtl(0)
        return kernel


@dataclass
class Monitor:
    """The VTL1 side."""

    space: KernelSpace
    params: hvcall.ParamPages
    assist_gpa: int
    sim_gpa: int
    hypercall_gpa: int
    log_va: int
    log_gpa: int
    entry_va: int
    idt: tuple[int, int]
    block_va: int
    initialized: bool = False
    #: The frames the loader gave the monitor (it protects them from VTL0 at initialisation).
    own_pfns: tuple[int, ...] = ()
    #: HV_INITIAL_VP_CONTEXT for EnableVpVtl, as the loader built it.
    initial_context: bytes = b""

    @classmethod
    def load(cls, machine: Machine) -> Monitor:
        space = KernelSpace(machine.ram, "bare-vtl1")
        in_va, in_gpa = space.alloc_data()
        out_va, out_gpa = space.alloc_data()
        _, assist_gpa = space.alloc_data()
        _, sim_gpa = space.alloc_data()
        _, hypercall_gpa = space.alloc_data()
        log_va, log_gpa = space.alloc_data()
        idt = space.build_idt({SINT0_VECTOR: "bare1.sint0"}, default="bare1.exception")
        entry = space.install("bare1.entry")
        block_va, _ = space.alloc_data()
        monitor = cls(
            space,
            hvcall.ParamPages(in_va, in_gpa, out_va, out_gpa),
            assist_gpa,
            sim_gpa,
            hypercall_gpa,
            log_va,
            log_gpa,
            entry,
            idt,
            block_va,
        )
        monitor.own_pfns = tuple(sorted(set(space.frames)))
        monitor.initial_context = monitor.context()
        machine.ram.place_image(1, block_va, monitor)
        return monitor

    def context(self) -> bytes:
        """VTL1's initial context: the entry, its IDT, and GS base on its processor block."""
        state = self.space.initial_state(self.entry_va, idt=self.idt)
        state.gs_base = self.block_va
        return encode_context(state)

    def log(self, vp: VirtualProcessor) -> list[tuple[int, int, int, int, int, int]]:
        """Host-side reading of the monitor's log page (for reports and tests)."""
        count = int.from_bytes(vp.ram.read(self.log_gpa, 8), "little")
        raw = vp.ram.read(self.log_gpa + 8, LOG_RECORD.size * min(count, LOG_CAPACITY))
        return [
            LOG_RECORD.unpack_from(raw, i * LOG_RECORD.size)[:1]
            + LOG_RECORD.unpack_from(raw, i * LOG_RECORD.size)[1:3]
            + LOG_RECORD.unpack_from(raw, i * LOG_RECORD.size)[4:]
            for i in range(min(count, LOG_CAPACITY))
        ]


# -- VTL0 routines ------------------------------------------------------------------------------
def _kernel(cpu: Cpu) -> BareKernel:
    kernel = cpu.kernel()
    assert isinstance(kernel, BareKernel)
    return kernel


def _monitor(cpu: Cpu) -> Monitor:
    monitor = cpu.kernel()
    assert isinstance(monitor, Monitor)
    return monitor


@guest_code("bare0.exception")
def _vtl0_exception(cpu: Cpu, vector: int, error_code: int) -> None:
    kernel = _kernel(cpu)
    kernel.exceptions.append(ExceptionRecord(cpu.vtl, cpu.cpl, vector, error_code, cpu.read_cr(2)))
    raise ThreadTerminated(
        f"VTL0 exception {Vector(vector).name if vector in Vector._value2member_map_ else vector}",
        vector,
        error_code,
    )


def enable_hypercalls(cpu: Cpu, hypercall_gpa: int) -> None:
    """Guest OS ID first, then the hypercall page (vsm-spec §1.1)."""
    cpu.wrmsr(HvMsr.GUEST_OS_ID, GUEST_OS_ID)
    cpu.wrmsr(HvMsr.HYPERCALL, hypercall_gpa | 1)


def boot_vtl1(cpu: Cpu, kernel: BareKernel, monitor: Monitor) -> list[str]:
    """VTL0's half of VSM enablement (vsm-spec §5.1 steps 1-5); returns what failed, if anything."""
    failures: list[str] = []
    enable_hypercalls(cpu, kernel.hypercall_gpa)
    result, values = hvcall.get_vp_registers(
        cpu, kernel.params, [HvRegisterName.VSM_PARTITION_STATUS]
    )
    if not result.ok or defs.PSTATUS_MAXIMUM_VTL.extract(values[0]) < 1:
        return [f"VsmPartitionStatus: {result.status_name}"]
    result = hvcall.enable_partition_vtl(
        cpu, kernel.params, 1, int(defs.HvEnablePartitionVtlFlags.ENABLE_MBEC)
    )
    if not result.ok:
        failures.append(f"EnablePartitionVtl: {result.status_name}")
    result = hvcall.enable_vp_vtl(cpu, kernel.params, 1, monitor.initial_context)
    if not result.ok:
        failures.append(f"EnableVpVtl: {result.status_name}")
        return failures
    hvcall.vtl_call(cpu)
    return failures


def monitor_call(cpu: Cpu, function: int, arg1: int = 0, arg2: int = 0) -> int:
    """VTL0 → VTL1 call with LVBS's register ABI; returns the status in R8."""
    cpu.rdi, cpu.rsi, cpu.rdx, cpu.r8 = function, arg1, arg2, MON_UNKNOWN
    hvcall.vtl_call(cpu)
    return cpu.r8


# -- VTL1 routines ------------------------------------------------------------------------------
@guest_code("bare1.entry")
def _vtl1_entry(cpu: Cpu) -> None:
    """The monitor's loop: initialise on the first VTL call, then serve every entry."""
    monitor = _monitor(cpu)
    _monitor_init(cpu, monitor)
    monitor.initialized = True
    reason_va = DIRECT_MAP + monitor.assist_gpa + defs.VP_ASSIST_ENTRY_REASON_OFFSET
    while True:
        hvcall.vtl_return(cpu)
        if cpu.read_u32(reason_va) == HvVtlEntryReason.VTL_CALL:
            _serve_call(cpu, monitor)


def _serve_call(cpu: Cpu, monitor: Monitor) -> None:
    function, arg1, arg2 = cpu.rdi, cpu.rsi, cpu.rdx
    status = MON_UNKNOWN
    if function == MON_NULL:
        status = MON_OK
    elif function == MON_PROTECT:
        result = hvcall.modify_vtl_protection_mask(cpu, monitor.params, [arg1 >> PAGE_SHIFT], arg2)
        status = MON_OK if result.ok else MON_FAILED
    elif function == MON_LOCK_CRS:
        control = int(
            defs.HvCrInterceptControl.CR0_WRITE
            | defs.HvCrInterceptControl.CR4_WRITE
            | defs.HvCrInterceptControl.MSR_LSTAR_WRITE
            | defs.HvCrInterceptControl.IDTR_WRITE
        )
        result = hvcall.set_vp_registers(
            cpu,
            monitor.params,
            [
                (HvRegisterName.CR_INTERCEPT_CR0_MASK, arg1),
                (HvRegisterName.CR_INTERCEPT_CR4_MASK, arg1),
                (HvRegisterName.CR_INTERCEPT_CONTROL, control),
            ],
        )
        status = MON_OK if result.ok else MON_FAILED
    # Clear the shared registers we do not return (vbs-internals §2.2 step 5).
    cpu.rdi = cpu.rsi = cpu.rdx = 0
    cpu.r8 = status


def _monitor_init(cpu: Cpu, monitor: Monitor) -> None:
    enable_hypercalls(cpu, monitor.hypercall_gpa)
    cpu.wrmsr(HvMsr.VP_ASSIST_PAGE, monitor.assist_gpa | 1)
    cpu.wrmsr(HvMsr.SIMP, monitor.sim_gpa | 1)
    cpu.wrmsr(HvMsr.SINT0, SINT0_VECTOR)
    cpu.wrmsr(HvMsr.SCONTROL, 1)
    config = (
        defs.PCONFIG_ENABLE_VTL_PROTECTION.mask
        | defs.PCONFIG_DEFAULT_VTL_PROTECTION_MASK.insert(0, 0xF)
    )
    config |= defs.PCONFIG_ZERO_MEMORY_ON_RESET.mask | defs.PCONFIG_DENY_LOWER_VTL_STARTUP.mask
    result = hvcall.set_vp_registers(
        cpu, monitor.params, [(HvRegisterName.VSM_PARTITION_CONFIG, config)]
    )
    if not result.ok:
        raise AssertionError(f"monitor could not configure VSM: {result.status_name}")
    # Take every frame of the monitor away from VTL0 (LVBS: ModifyVtlProtectionMask(flags=0)).
    hvcall.modify_vtl_protection_mask(
        cpu, monitor.params, list(monitor.own_pfns), int(HvMapGpaFlags(0))
    )


@guest_code("bare1.sint0")
def _vtl1_sint0(cpu: Cpu, vector: int, error_code: int) -> None:
    monitor = _monitor(cpu)
    slot = DIRECT_MAP + monitor.sim_gpa  # SINT0's slot is the first of the SIM page
    message_type = cpu.read_u32(slot)
    payload = cpu.read(slot + 16, defs.HV_MESSAGE_PAYLOAD_SIZE)
    header = defs.INTERCEPT_HEADER.unpack_from(payload)
    access, state = header[2], header[3]
    gpa = gva = value = 0
    if message_type == defs.HvMessageType.GPA_INTERCEPT:
        fields = defs.MEMORY_INTERCEPT_MESSAGE.unpack_from(payload)
        gva, gpa = fields[-3], fields[-2]
    elif message_type == defs.HvMessageType.REGISTER_INTERCEPT:
        value = defs.REGISTER_INTERCEPT_MESSAGE.unpack_from(payload)[-2]
    elif message_type == defs.HvMessageType.MSR_INTERCEPT:
        fields = defs.MSR_INTERCEPT_MESSAGE.unpack_from(payload)
        value = (fields[-2] << 32) | (fields[-1] & 0xFFFF_FFFF)
    count = cpu.read_u64(monitor.log_va)
    if count < LOG_CAPACITY:
        record = LOG_RECORD.pack(
            message_type, access, defs.EXEC_STATE_VTL.extract(state), 0, gpa, gva, value
        )
        cpu.write(monitor.log_va + 8 + count * LOG_RECORD.size, record)
    cpu.write_u64(monitor.log_va, count + 1)
    # Resolve: #GP into VTL0, as LVBS does for GPA intercepts and refused register writes.
    event = defs.PEV_EVENT_PENDING.mask | defs.PEV_DELIVER_ERROR_CODE.mask
    event = defs.PEV_VECTOR.insert(event, int(Vector.GP))
    hvcall.set_vp_registers(
        cpu, monitor.params, [(HvRegisterName.PENDING_EVENT0, event)], target_vtl=0
    )
    # Free the slot, then EOM if another message is pending (vsm-spec §6.2).
    flags = cpu.read(slot + 5, 1)[0]
    cpu.write_u32(slot, 0)
    if flags & defs.HV_MESSAGE_FLAG_PENDING:
        cpu.wrmsr(HvMsr.EOM, 0)


@guest_code("bare1.exception")
def _vtl1_exception(cpu: Cpu, vector: int, error_code: int) -> None:
    raise ThreadTerminated(f"VTL1 monitor exception {vector}", vector, error_code)


def boot_bare(machine: Machine) -> tuple[BareKernel, Monitor, list[str]]:
    """Load both sides and enable VTL1 from VTL0 on the boot processor."""
    kernel = BareKernel.load(machine)
    monitor = Monitor.load(machine)
    failures = boot_vtl1(machine.bsp.cpu, kernel, monitor)
    return kernel, monitor, failures


__all__ = [
    "MON_LOCK_CRS",
    "MON_NULL",
    "MON_PROTECT",
    "BareKernel",
    "HvStatus",
    "Monitor",
    "Msr",
    "boot_bare",
    "monitor_call",
]
