"""The guest's side of the hypercall ABI (what ``HvlInvokeHypercall`` does in a real kernel).

A kernel owns a pair of parameter pages (input, output), writes the input block through its own
virtual mapping, loads RCX/RDX/R8 and executes ``vmcall``.  VTL call and return are issued as the
hypercall page's stubs do (vsm-spec §1.3): ``mov rax, rcx; mov ecx, 0x11|0x12; vmcall``; the model
performs those register moves here because stub bytes need a native CPU to execute.
"""

from __future__ import annotations

from dataclasses import dataclass

from vbsim.hv import abi, defs
from vbsim.hv.defs import HvCallCode, HvStatus
from vbsim.hw.cpu import Cpu


@dataclass(slots=True)
class ParamPages:
    in_va: int
    in_gpa: int
    out_va: int
    out_gpa: int


@dataclass(slots=True)
class HypercallResult:
    status: int
    reps: int
    output: bytes
    #: The input value as the hypervisor left it in RCX: for a rep call, with the new rep start
    #: index (TLFS hypercall-interface.md "Volatile Registers").
    control: int = 0

    @property
    def ok(self) -> bool:
        return self.status == HvStatus.SUCCESS

    @property
    def status_name(self) -> str:
        try:
            return HvStatus(self.status).name
        except ValueError:
            return f"0x{self.status:04x}"


def input_value(
    code: int, *, rep_count: int = 0, rep_start: int = 0, fast: bool = False, varhead: int = 0
) -> int:
    value = defs.INPUT_CALL_CODE.insert(0, code & 0xFFFF)
    value = defs.INPUT_FAST.insert(value, int(fast))
    value = defs.INPUT_VARHEAD_SIZE.insert(value, varhead & 0x3FF)
    value = defs.INPUT_REP_COUNT.insert(value, rep_count & 0xFFF)
    return defs.INPUT_REP_START.insert(value, rep_start & 0xFFF)


def hypercall(
    cpu: Cpu,
    pages: ParamPages,
    code: int,
    data: bytes = b"",
    *,
    rep_count: int = 0,
    rep_start: int = 0,
    varhead: int = 0,
    out_size: int = 0,
) -> HypercallResult:
    """A memory-based hypercall.

    RCX is volatile across the call (MS x64 ABI; a rep call rewrites it with the new rep start
    index), so a real wrapper's caller keeps anything it needs elsewhere: the model's kernels keep
    a system call's user return RIP in the live RCX (standing for the trap frame), so this
    wrapper hands the updated control back in the result and restores the caller's RCX."""
    if data:
        cpu.write(pages.in_va, data)
    saved = cpu.rcx
    cpu.rcx = input_value(code, rep_count=rep_count, rep_start=rep_start, varhead=varhead)
    cpu.rdx = pages.in_gpa
    cpu.r8 = pages.out_gpa
    cpu.vmcall()
    result = _result(cpu, cpu.read(pages.out_va, out_size) if out_size else b"")
    cpu.rcx = saved
    return result


def raw_hypercall(cpu: Cpu, control: int, rdx: int, r8: int) -> HypercallResult:
    """Any input value with any parameter registers (what an attacker or a fuzzer issues)."""
    cpu.rcx, cpu.rdx, cpu.r8 = control, rdx, r8
    cpu.vmcall()
    return _result(cpu, b"")


def fast_hypercall(cpu: Cpu, code: int, rdx: int, r8: int) -> HypercallResult:
    cpu.rcx = input_value(code, fast=True)
    cpu.rdx, cpu.r8 = rdx, r8
    cpu.vmcall()
    return _result(cpu, b"")


def _result(cpu: Cpu, output: bytes) -> HypercallResult:
    rax = cpu.rax
    return HypercallResult(
        defs.RESULT_STATUS.extract(rax), defs.RESULT_REPS_COMPLETE.extract(rax), output, cpu.rcx
    )


_VTL_CALL_CODE = int(HvCallCode.VTL_CALL)
_VTL_RETURN_CODE = int(HvCallCode.VTL_RETURN)


def vtl_call(cpu: Cpu, control: int = 0) -> None:
    """The 64-bit VTL-call stub: ``mov rax, rcx; mov ecx, 0x11; vmcall``."""
    cpu.rcx = control
    cpu.rax = cpu.rcx
    cpu.rcx = _VTL_CALL_CODE
    cpu.vmcall()


def vtl_return(cpu: Cpu, fast: bool = True) -> None:
    """The 64-bit VTL-return stub: ``mov rax, rcx; mov ecx, 0x12; vmcall``."""
    cpu.rcx = int(fast)
    cpu.rax = cpu.rcx
    cpu.rcx = _VTL_RETURN_CODE
    cpu.vmcall()


# -- typed wrappers for the VSM calls -------------------------------------------------------------
def get_vp_registers(
    cpu: Cpu,
    pages: ParamPages,
    names: list[int],
    target_vtl: int | None = None,
    vp_index: int = defs.HV_VP_INDEX_SELF,
) -> tuple[HypercallResult, list[int]]:
    header = defs.GET_SET_VP_REGISTERS_HEADER.pack(
        defs.HV_PARTITION_ID_SELF, vp_index, abi.input_vtl(target_vtl)
    )
    body = b"".join(n.to_bytes(4, "little") for n in names)
    result = hypercall(
        cpu,
        pages,
        HvCallCode.GET_VP_REGISTERS,
        header + body,
        rep_count=len(names),
        out_size=16 * len(names),
    )
    values = [
        int.from_bytes(result.output[i * 16 : i * 16 + 16], "little") for i in range(result.reps)
    ]
    return result, values


def set_vp_registers(
    cpu: Cpu,
    pages: ParamPages,
    values: list[tuple[int, int]],
    target_vtl: int | None = None,
    vp_index: int = defs.HV_VP_INDEX_SELF,
) -> HypercallResult:
    header = defs.GET_SET_VP_REGISTERS_HEADER.pack(
        defs.HV_PARTITION_ID_SELF, vp_index, abi.input_vtl(target_vtl)
    )
    body = b"".join(
        defs.SET_VP_REGISTERS_ELEMENT.pack(n, v.to_bytes(16, "little")) for n, v in values
    )
    return hypercall(cpu, pages, HvCallCode.SET_VP_REGISTERS, header + body, rep_count=len(values))


def modify_vtl_protection_mask(
    cpu: Cpu,
    pages: ParamPages,
    gpns: list[int],
    flags: int,
    target_vtl: int | None = None,
) -> HypercallResult:
    header = defs.MODIFY_VTL_PROTECTION_MASK_HEADER.pack(
        defs.HV_PARTITION_ID_SELF, flags, abi.input_vtl(target_vtl)
    )
    results = HypercallResult(HvStatus.SUCCESS, 0, b"")
    per_call = (4096 - 16) // 8
    for start in range(0, len(gpns), per_call):
        chunk = gpns[start : start + per_call]
        body = b"".join(g.to_bytes(8, "little") for g in chunk)
        result = hypercall(
            cpu, pages, HvCallCode.MODIFY_VTL_PROTECTION_MASK, header + body, rep_count=len(chunk)
        )
        results = HypercallResult(result.status, results.reps + result.reps, b"")
        if not result.ok:
            break
    return results


def enable_partition_vtl(cpu: Cpu, pages: ParamPages, vtl: int, flags: int = 0) -> HypercallResult:
    return hypercall(
        cpu,
        pages,
        HvCallCode.ENABLE_PARTITION_VTL,
        defs.ENABLE_PARTITION_VTL_INPUT.pack(defs.HV_PARTITION_ID_SELF, vtl, flags),
    )


def enable_vp_vtl(
    cpu: Cpu,
    pages: ParamPages,
    vtl: int,
    context: bytes,
    vp_index: int = defs.HV_VP_INDEX_SELF,
) -> HypercallResult:
    header = defs.ENABLE_VP_VTL_HEADER.pack(defs.HV_PARTITION_ID_SELF, vp_index, vtl)
    return hypercall(cpu, pages, HvCallCode.ENABLE_VP_VTL, header + context)


def start_virtual_processor(
    cpu: Cpu, pages: ParamPages, vp_index: int, vtl: int, context: bytes
) -> HypercallResult:
    header = defs.START_VIRTUAL_PROCESSOR_HEADER.pack(defs.HV_PARTITION_ID_SELF, vp_index, vtl)
    return hypercall(cpu, pages, HvCallCode.START_VIRTUAL_PROCESSOR, header + context)


def translate_virtual_address(
    cpu: Cpu,
    pages: ParamPages,
    gva: int,
    flags: int,
    target_vtl: int | None = None,
    vp_index: int = defs.HV_VP_INDEX_SELF,
) -> tuple[HypercallResult, int, int]:
    control = defs.TRANSLATE_INPUT_VTL.insert(flags, abi.input_vtl(target_vtl))
    data = defs.TRANSLATE_VIRTUAL_ADDRESS_INPUT.pack(
        defs.HV_PARTITION_ID_SELF, vp_index, control, gva >> 12
    )
    result = hypercall(cpu, pages, HvCallCode.TRANSLATE_VIRTUAL_ADDRESS, data, out_size=16)
    code, gpa_page = defs.TRANSLATE_VIRTUAL_ADDRESS_OUTPUT.unpack(result.output)
    return result, code & 0xFFFF_FFFF, gpa_page
