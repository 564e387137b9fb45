"""Secure sections: pages a trustlet shares with VTL0 (vbs-internals §4.4, a TOCTOU surface)."""

from __future__ import annotations

from vbsim.boot.chain import boot
from vbsim.boot.trustlets import trustlet_image
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.code import guest_code
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SHIFT
from vbsim.ium import iumbase
from vbsim.nt.secure_process import create_secure_process, run_trustlet
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset
from vbsim.sk.sscn import Service

SECTION_STATE: dict[str, int] = {}


@guest_code("test.ium.section")
def _section(vp: VirtualProcessor, message: int, length: int, reply: int) -> int:
    op = vp.read(message, 1)[0]
    try:
        if op == 1:  # create and publish
            va, index = iumbase.create_secure_section(vp, 4096)
            vp.write(va, b"from VTL1")
            SECTION_STATE["va"] = va
            vp.write(reply, index.to_bytes(8, "little"))
            return 8
        data = vp.read(SECTION_STATE["va"], 16)  # read back what is there now
        vp.write(reply, data)
        return 16
    except iumbase.IumError as error:
        vp.write(reply, error.status.to_bytes(8, "little"))
        return 8


def _start(capabilities: int) -> tuple[object, object, object]:
    system = boot(preset("vbs"))
    assert system.nt is not None and system.machine is not None
    image = trustlet_image(
        "Section.exe", trustlet_id=4, entry="test.ium.section", capabilities=capabilities
    )
    status, process = create_secure_process(
        system.nt, system.machine.bsp.cpu, "Section.exe", 4, image=image
    )
    assert status == NtStatus.SUCCESS and process is not None
    return system, system.nt, process


def test_section_is_shared_both_ways() -> None:
    system, nt, process = _start(capabilities=1)
    vp = system.machine.bsp  # type: ignore[attr-defined]
    run = run_trustlet(nt, vp.cpu, process, b"\x01")  # type: ignore[arg-type]
    index = int.from_bytes(run.reply, "little")
    status, outputs = nt.vsl.call(vp.cpu, Service.CREATE_SECURE_SECTION, process.secure_pid, index)  # type: ignore[attr-defined]
    assert status == NtStatus.SUCCESS and outputs[0] == 1
    va = DIRECT_MAP + (outputs[1] << PAGE_SHIFT)
    assert vp.read(va, 9) == b"from VTL1"  # VTL0 ring 0 reads it: shared by design
    vp.write(va, b"from VTL0 ring 0")  # ... and writes it: the TOCTOU surface
    again = run_trustlet(nt, vp.cpu, process, b"\x02")  # type: ignore[arg-type]
    assert again.reply == b"from VTL0 ring 0"


def test_section_needs_the_capability_and_private_memory_stays_private() -> None:
    system, nt, process = _start(capabilities=0)
    vp = system.machine.bsp  # type: ignore[attr-defined]
    run = run_trustlet(nt, vp.cpu, process, b"\x01")  # type: ignore[arg-type]
    assert int.from_bytes(run.reply, "little") == NtStatus.ACCESS_DENIED
    status, _ = nt.vsl.call(vp.cpu, Service.CREATE_SECURE_SECTION, process.secure_pid, 0)  # type: ignore[attr-defined]
    assert status == NtStatus.INVALID_PARAMETER  # no section published: nothing to name
