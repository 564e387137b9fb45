"""The monitor: silent on what the model legitimately does, and it catches each invariant broken.

Breaking an invariant on a correct model takes a debugger: these tests plant the fault host-side
(a write, a SLAT entry, a register) inside a monitored step and check the monitor names it.
"""

from __future__ import annotations

import pytest

from vbsim.boot.chain import boot
from vbsim.guest import hvcall
from vbsim.hw.dma import DmaDevice
from vbsim.hw.slat import KX, UX, R, W
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Msr
from vbsim.invariants import INVARIANTS, InvariantViolation, Monitor
from vbsim.nt import drivers, kdp, secure_process
from vbsim.nt.process import Token
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset
from vbsim.sk.kernel import Reply
from vbsim.sk.layouts import Field, SkProcess
from vbsim.sk.sscn import Service
from vbsim.trace import Trace

from .kit import Rig, attached


def _benign(rig: Rig) -> None:
    """What NT legitimately does with the Secure Kernel, one monitored step each."""
    nt, vp, mon = rig.nt, rig.vp, rig.monitor
    with mon.step("null"):
        assert nt.vsl is not None
        assert nt.vsl.call(vp.cpu, Service.NULL)[0] == NtStatus.SUCCESS
    with mon.step("create secure allocation"):
        status, handle = kdp.create_secure_allocation(nt, vp.cpu, 6000)
    assert status == NtStatus.SUCCESS
    with mon.step("fill secure allocation"):
        assert kdp.fill_secure_allocation(nt, vp.cpu, handle, 8, b"data" * 1000) == NtStatus.SUCCESS
    if rig.system.policy.kdp:
        with mon.step("protect a driver section"):
            section = kdp.load_data_section(nt, vp.cpu, "test.data", 2, b"x" * 64)
            assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va) == NtStatus.SUCCESS
        with mon.step("secure pool"):
            status, pool = kdp.ex_create_secure_pool(nt, vp.cpu, 1)
            assert pool is not None
            status, va = kdp.ex_allocate_pool3_secure(nt, vp.cpu, pool, 0x4C4F4F50, b"abc", 7)
            assert status == NtStatus.SUCCESS
            kdp.ex_secure_pool_update(nt, vp.cpu, pool, 0x4C4F4F50, va, 7, 1, b"z")
    with mon.step("load a driver"):
        assert drivers.load_driver(nt, vp.cpu, drivers.SAMPLE_DRIVER) == NtStatus.SUCCESS
    lsaiso = nt.lookup_process(vp.cpu, nt.started_trustlets["LsaIso.exe"])
    assert lsaiso is not None
    with mon.step("LsaIso gets a message"):
        secure_process.run_trustlet(nt, vp.cpu, lsaiso, b"\x02\x00\x00\x00garbage")
    from vbsim.invariants.attacker import trustlet_image

    with mon.step("start vmsp"):
        status, vmsp = secure_process.create_secure_process(
            nt, vp.cpu, "vmsp.exe", 2, 5, None, trustlet_image("vmsp")
        )
    assert vmsp is not None
    with mon.step("vmsp seals"):
        run = secure_process.run_trustlet(nt, vp.cpu, vmsp, b"\x01\x00\x00\x00\x03\x00\x00\x00data")
    assert run.status == NtStatus.SUCCESS
    mon.sweep()


@pytest.mark.parametrize("name", ["vbs", "vbs-hvci", "hardened"])
def test_what_the_model_does_breaks_nothing(name: str) -> None:
    rig = attached(name)
    try:
        _benign(rig)
        assert rig.monitor.violations == []
        assert rig.monitor.stats.steps >= 7 and rig.monitor.stats.checks > 50
        assert rig.monitor.stats.events > 100
    finally:
        rig.close()


def test_attach_needs_a_running_secure_kernel() -> None:
    system = boot(preset("vbs-off"), trace=Trace())
    with pytest.raises(ValueError, match="VBS"):
        Monitor.attach(system)


def test_canaries_and_secrets_are_collected() -> None:
    rig = attached("vbs")
    try:
        names = [s.name for s in rig.monitor.secrets.items]
        assert {"sk.master-key.idk", "sk.dump-key", "canary:sk.hvci-records"} <= set(names)
        assert any(n.startswith("lsaiso.owf[0]") for n in names)
        assert any(n.startswith("canary:trustlet1@") for n in names)
        assert sorted(INVARIANTS) == list(range(1, 9))
    finally:
        rig.close()


# -- each invariant, broken on purpose ---------------------------------------------------------
def _caught(rig: Rig, invariant: int) -> str:
    assert invariant in rig.invariants(), [v.report() for v in rig.monitor.violations]
    violation = next(v for v in rig.monitor.violations if v.invariant == invariant)
    assert f"invariant {invariant}" in violation.report()
    return violation.message


def test_1_a_canary_copied_into_vtl0_memory() -> None:
    rig = attached("vbs")
    try:
        canary = next(s for s in rig.monitor.secrets.items if s.canary)
        va, _ = rig.nt.alloc_kernel_page(rig.vp.cpu)
        with pytest.raises(InvariantViolation) as caught, rig.monitor.step("leak"):
            rig.vp.write(va + 100, canary.data * 2)
        assert caught.value.violation.invariant == 1
        assert canary.name in caught.value.violation.message
    finally:
        rig.close()


def test_1_a_master_key_in_a_register() -> None:
    rig = attached("hardened", stop=False)
    try:
        key = next(s for s in rig.monitor.secrets.items if s.name == "sk.master-key.local")
        with rig.monitor.step("leak"):
            rig.vp.r12 = int.from_bytes(key.data[5:13], "little")
        assert "r12: sk.master-key.local" in _caught(rig, 1)
    finally:
        rig.close()


def test_1_a_secret_in_a_dma_device_buffer() -> None:
    rig = attached("vbs", budget=0, stop=False)
    try:
        key = next(s for s in rig.monitor.secrets.items if s.name == "sk.dump-key")
        pfn = rig.machine.ram.frames.alloc_contiguous(1, "test")  # no processor wrote it
        rig.machine.ram.write(pfn << PAGE_SHIFT, key.data)
        device = DmaDevice("test-nic", rig.machine.iommu)
        rig.monitor.watch_device(device)
        with rig.monitor.step("device reads the page"):
            assert device.dma_read(pfn << PAGE_SHIFT, 64) is not None
        assert "buffer of DMA device test-nic" in _caught(rig, 1)
    finally:
        rig.close()


def test_1_the_final_sweep_finds_what_steps_did_not_touch() -> None:
    rig = attached("vbs", budget=0, stop=False)
    try:
        canary = next(s for s in rig.monitor.secrets.items if s.canary)
        pfn = rig.machine.ram.frames.alloc_contiguous(1, "test")
        rig.monitor._populated.add(pfn)  # a page the monitor knows was handed out
        rig.machine.ram.write(pfn << PAGE_SHIFT, canary.data * 3)
        with rig.monitor.step("nothing"):
            pass
        assert rig.monitor.violations == []
        with pytest.raises(InvariantViolation):
            rig.monitor.stop = True
            rig.monitor.sweep()
    finally:
        rig.close()


def test_2_a_slat_entry_changed_without_a_hypercall() -> None:
    rig = attached("vbs", stop=False)
    try:
        gpn = rig.monitor.pages.static[0]
        with rig.monitor.step("debugger pokes the SLAT"):
            rig.machine.slat.set(1, gpn, 0xF)  # type: ignore[union-attr]
        assert "outside any VTL1" in _caught(rig, 2)
    finally:
        rig.close()


def test_2_vtl0_cannot_change_its_own_slat() -> None:
    rig = attached("vbs")
    try:
        params = hvcall.ParamPages(
            *rig.nt.alloc_kernel_page(rig.vp.cpu), *rig.nt.alloc_kernel_page(rig.vp.cpu)
        )
        with rig.monitor.step("VTL0 ModifyVtlProtectionMask"):
            result = hvcall.modify_vtl_protection_mask(
                rig.vp, params, [rig.monitor.pages.static[0]], 0xF, target_vtl=1
            )
        assert not result.ok
        assert rig.monitor.violations == []
    finally:
        rig.close()


def test_3_vtl1_granting_w_and_kx_under_hvci() -> None:
    rig = attached("vbs-hvci", stop=False)
    try:
        _, gpa = rig.nt.alloc_kernel_page(rig.vp.cpu)
        vp = rig.vp
        with rig.monitor.step("VTL1 grants W+KX"):
            vp.switch_vtl(1)  # the test stands in for VTL1 software (a debugger's view)
            try:
                hvcall.modify_vtl_protection_mask(vp, rig.sk.params, [gpa >> 12], R | W | KX | UX)
            finally:
                vp.switch_vtl(0)
        assert "W+KX" in _caught(rig, 3)
    finally:
        rig.close()


def test_3_kx_on_a_page_hvci_never_validated() -> None:
    rig = attached("vbs-hvci", stop=False)
    try:
        _, gpa = rig.nt.alloc_kernel_page(rig.vp.cpu)
        with rig.monitor.step("KX without validation"):
            rig.machine.slat.set(1, gpa >> 12, R | KX | UX)  # type: ignore[union-attr]
        assert "not VALIDATED" in _caught(rig, 3)
    finally:
        rig.close()


def test_4_vtl1_user_code_outside_any_trustlet() -> None:
    rig = attached("vbs", stop=False)
    try:
        vp = rig.vp
        with rig.monitor.step("VTL1 CPL3 with no trustlet"):
            vp.switch_vtl(1)
            vp.set_cpl(3)
            try:
                vp.emit("test", "user-code", "ran")
            finally:
                vp.set_cpl(0)
                vp.switch_vtl(0)
        assert "outside any trustlet" in _caught(rig, 4)
    finally:
        rig.close()


def test_4_a_process_created_without_admission() -> None:
    rig = attached("vbs", stop=False)
    try:
        with rig.monitor.step("forged creation"):
            rig.system.trace.emit(
                "ium",
                "create-process",
                "created",
                vp=0,
                vtl=1,
                cpl=0,
                handle=0x1_4000_0100,
                trustlet_id=9,
            )  # fmt: skip  (the SK's own report of a creation it did not admit)
        assert "without SKCI admission" in _caught(rig, 4)
    finally:
        rig.close()


def test_5_dma_through_a_broken_iommu() -> None:
    rig = attached("vbs", stop=False)
    try:
        iommu = rig.machine.iommu
        device = DmaDevice("test-nic", iommu)
        target = rig.monitor.pages.static[0] << PAGE_SHIFT
        saved, iommu.slat = iommu.slat, None  # an IOMMU that forgets VTL0's SLAT
        try:
            with rig.monitor.step("device writes SK memory"):
                device.dma_write(target + 0x800, b"\xee" * 16)
        finally:
            iommu.slat = saved
        assert "a VTL1 page" in _caught(rig, 5)
        assert 6 in rig.invariants()  # and the SK page changed
    finally:
        rig.close()


def test_6_an_sk_page_changed() -> None:
    rig = attached("vbs", stop=False)
    try:
        page = next(p for p, label in rig.monitor.pages.labels.items() if label == "vsm-keys")
        with rig.monitor.step("poke"):
            rig.machine.ram.write((page << PAGE_SHIFT) + 0xF00, b"\x01")
        assert "vsm-keys" in _caught(rig, 6)
    finally:
        rig.close()


def test_6_a_refused_secure_call_that_changed_sk_memory() -> None:
    rig = attached("vbs", stop=False)
    try:
        from vbsim.sk.services import allocation

        arena = allocation.state(rig.sk).arena_va

        def sloppy(cpu: object, args: object) -> Reply:
            rig.vp.write(arena, b"scribble")  # runs in VTL1, as the service would
            return Reply(NtStatus.INVALID_PARAMETER)

        # The SK dispatches from its table in VTL1 memory: point NULL's entry at other SK code.
        from vbsim.hw import code
        from vbsim.sk.layouts import Dispatch

        code.register("test.sloppy-service", sloppy)
        assert rig.system.sk_space is not None
        routine = rig.system.sk_space.install("test.sloppy-service")
        number = rig.sk.table.number[Service.NULL]
        rig.machine.ram.write_u64(rig.sk.dispatch_gpa + number * Dispatch.ENTRY, routine)
        with rig.monitor.step("refused but wrote"):
            assert rig.nt.vsl is not None
            rig.nt.vsl.call(rig.vp.cpu, Service.NULL)
        assert "refused" in _caught(rig, 6)
    finally:
        rig.close()


def test_8_a_kdp_page_changed() -> None:
    rig = attached("vbs-hvci", stop=False)
    try:
        with rig.monitor.step("protect"):
            section = kdp.load_data_section(rig.nt, rig.vp.cpu, "test.data", 1, b"config" * 8)
            assert kdp.mm_protect_driver_section(rig.nt, rig.vp.cpu, section.va) == NtStatus.SUCCESS
        assert rig.monitor.violations == []
        with rig.monitor.step("a debugger writes the protected page"):
            rig.machine.ram.write(section.pfns[0] << PAGE_SHIFT, b"tampered")
        assert "static KDP page" in _caught(rig, 8)
    finally:
        rig.close()


def test_8_the_kcfg_bitmap_changes_only_in_enable_cfg_target() -> None:
    """The kernel CFG bitmap is the SK's to write after boot (sk.services.kcfg): loading a signed
    driver, whose exports the SK marks valid, is fine; any other change is a violation."""
    from vbsim.nt import kcfg

    rig = attached("vbs-hvci", stop=False)
    try:
        mark = len(rig.system.trace.events)
        with rig.monitor.step("load a signed driver"):
            assert drivers.load_driver(rig.nt, rig.vp.cpu, drivers.SAMPLE_DRIVER) == 0
        events = rig.system.trace.events[mark:]
        assert any(e.mechanism == "kcfg.target" and e.outcome == "enabled" for e in events)
        assert rig.monitor.violations == []
        bitmap = rig.nt.variables[kcfg.BITMAP].gpa
        with rig.monitor.step("a debugger sets a bit"):
            rig.machine.ram.write(bitmap + 8, b"\xff" * 8)
        assert "kernel CFG bitmap page" in _caught(rig, 8)
    finally:
        rig.close()


def test_7_a_vtl_switch_without_a_gate() -> None:
    rig = attached("vbs", stop=False)
    try:
        vp = rig.vp
        with rig.monitor.step("switch"):
            vp.switch_vtl(1)
            try:
                vp.emit("test", "in-vtl1", "ran")
            finally:
                vp.switch_vtl(0)
        assert "without a VTL switch" in _caught(rig, 7)
    finally:
        rig.close()


def test_7_a_cpl_raise_without_a_gate() -> None:
    rig = attached("vbs", stop=False)
    try:
        vp = rig.vp
        with rig.monitor.step("raise"):
            # The processor's own CPL register, changed with no gate and no trace of it
            # (VirtualProcessor.set_cpl announces itself as transitional; see monitor._gate).
            vp._set_cpl(3)
            vp.emit("test", "user", "ran")
            vp._set_cpl(0)
            vp.emit("test", "kernel", "ran")
        assert "without a gate" in _caught(rig, 7)
    finally:
        rig.close()


def test_7_a_mode_change_no_event_shows() -> None:
    rig = attached("vbs", stop=False)
    try:
        with rig.monitor.step("silent"):
            rig.vp._set_cpl(3)
        assert "after the step" in _caught(rig, 7)
    finally:
        rig.vp.set_cpl(0)
        rig.close()


def test_7_user_mode_and_its_gates_are_fine() -> None:
    """A user run (drop to CPL3, syscall, sysret, a #GP that ends the thread, the kernel's CR3
    reload when the routine returns) is all architectural."""
    from vbsim.invariants.attacker import Action, Program, Session

    session = Session("vbs")
    try:
        program = Program(
            "U0",
            (
                Action("syscall", ("NtTestAlert", (0, 0, 0, 0))),
                Action("privileged", ("wrmsr",)),
                Action("uread", (0xFFFF_8000_0000_0000, 8)),
            ),
        )
        result = session.run(program)
        assert result.terminated is None and result.actions == 3
        assert session.monitor is not None and session.monitor.violations == []
    finally:
        session.close()


def test_7_a_gate_in_the_wrong_direction() -> None:
    """A ``sysret`` event while the VP is already at CPL3 is no gate: SYSRET goes CPL0 → 3."""
    rig = attached("vbs", stop=False)
    try:
        vp = rig.vp
        with rig.monitor.step("forged sysret"):
            vp._set_cpl(3)
            vp.emit("syscall", "sysret", "returned", status=0)
            vp.emit("syscall", "sysret", "returned", status=0)
            vp._set_cpl(0)
            vp.emit("syscall", "lstar", "entered", number=0)
        assert "the gate goes from CPL0 to 3" in _caught(rig, 7)
    finally:
        rig.vp._set_cpl(0)
        rig.close()


def test_7_an_iret_must_return_where_the_delivery_interrupted() -> None:
    rig = attached("vbs", stop=False)
    try:
        vp = rig.vp
        with rig.monitor.step("forged iret"):
            vp.emit("exception", "idt", "delivered", vector=13, error_code=0, depth=0)
            vp._set_cpl(3)
            vp.emit("iret", "iret", "returned", vector=13, depth=0)  # delivered at CPL0
            vp._set_cpl(0)
            vp.emit("syscall", "lstar", "entered", number=0)
        assert "but the delivery interrupted VTL0 CPL0" in _caught(rig, 7)
    finally:
        rig.vp._set_cpl(0)
        rig.close()


def test_7_user_callbacks_and_exceptions_from_user_mode_are_gates() -> None:
    """``user_call`` (sysret in, syscall back) and a #GP taken at CPL3 whose handler returns
    (IRET back to CPL3) leave nothing to report."""
    from vbsim.hw import code

    rig = attached("vbs", stop=False)
    try:
        vp = rig.vp
        nt = rig.system.nt
        assert nt is not None
        process = nt.create_process(vp.cpu, "gates.exe", Token("gates"))
        name = "test.invariants.gates.user"

        def user(cpu: object) -> int:
            return 7

        code.register(name, user)
        entry = nt.map_code(vp.cpu, process, [name])[name]
        saved = vp.p.cr3
        with rig.monitor.step("user callback"):
            vp.mov_to_cr(3, process.tables.root)
            assert vp.user_call(entry) == 7
            vp.mov_to_cr(3, saved)
        assert 7 not in rig.invariants(), [v.report() for v in rig.monitor.violations]
        kinds = [(e.kind, e.outcome) for e in rig.system.trace.events[-8:]]
        assert ("syscall", "user-callback") in kinds and ("syscall", "callback-return") in kinds
    finally:
        rig.close()


def test_a_violation_stops_the_run_with_a_report() -> None:
    rig = attached("vbs")
    try:
        with pytest.raises(InvariantViolation) as caught, rig.monitor.step("label of the step"):
            rig.vp.wrmsr(int(Msr.LSTAR), rig.vp.rdmsr(int(Msr.LSTAR)))  # harmless
            rig.machine.ram.write(rig.monitor.pages.static[0] << PAGE_SHIFT, b"\xcc")
        report = caught.value.violation.report()
        assert "invariant 6 (sk-integrity)" in report and "label of the step" in report
        assert "the trace leading to it" in report
    finally:
        rig.close()


def test_dma_checks_follow_the_iommu_domain() -> None:
    from vbsim.hw.iommu import IommuDomain

    rig = attached("vbs")
    try:
        device = DmaDevice("test-nic", rig.machine.iommu)
        domain = IommuDomain("test")
        pfn = rig.machine.ram.frames.alloc("test")
        domain.map(0x10_0000, pfn << PAGE_SHIFT, PAGE_SIZE)
        rig.machine.iommu.assign(device.requester, domain)
        with rig.monitor.step("mapped DMA"):
            assert device.dma_write(0x10_0000, b"ok") == 1
        assert rig.monitor.violations == []
        assert rig.machine.ram.read(pfn << PAGE_SHIFT, 2) == b"ok"
    finally:
        rig.close()


# -- claims guest code emits are not the Secure Kernel's reports (a sixth audit) -------------
def _forged_dispatch(rig: Rig, mode: str) -> None:
    """An SK handle-table page changes (a stand-in for a VTL0→VTL1 write bug) while the acting
    code emits 'securecall/dispatch STATUS_SUCCESS' itself: from VTL0 ring 0, ring 3, or a K1
    payload's host entry into VTL1."""
    page = next(p for p, label in rig.monitor.pages.labels.items() if label == "handle-table[0]")
    code = rig.sk.table.number[Service.LOAD_DRIVER]
    vp = rig.vp
    with rig.monitor.step(f"forged acceptance from {mode}"):
        if mode == "K1":
            previous = vp.host_entry(1)
            try:
                vp.cpu.write(rig.sk.space.phys_va(0) + (page << PAGE_SHIFT) + 0xF00, b"A" * 8)
                vp.cpu.emit("securecall", "dispatch", "STATUS_SUCCESS", code=code)
            finally:
                vp.host_entry(previous)
            return
        rig.machine.ram.write((page << PAGE_SHIFT) + 0xF00, b"A" * 8)
        if mode == "U0":
            vp.set_cpl(3)
        try:
            vp.cpu.emit("securecall", "dispatch", "STATUS_SUCCESS", code=code)
        finally:
            vp.set_cpl(0)


@pytest.mark.parametrize("mode", ["K0", "U0", "K1"])
def test_6_an_acceptance_guest_code_emits_is_not_an_accepted_secure_call(mode: str) -> None:
    rig = attached("vbs-hvci", stop=False)
    try:
        _forged_dispatch(rig, mode)
        assert "outside any accepted secure call" in _caught(rig, 6)
    finally:
        rig.close()


def test_4_an_admission_vtl0_emits_admits_nothing() -> None:
    """A K0 payload's own 'skci.admitted' and 'create-process created' events add no admitted
    trustlet: only events the processor stamped VTL1 CPL0 on a VTL call are the SK's."""
    rig = attached("vbs", stop=False)
    try:
        with rig.monitor.step("forged admission"):
            cpu = rig.vp.cpu
            cpu.emit("ium", "skci.admitted", "admitted", trustlet_id=9)
            cpu.emit("ium", "create-process", "created", handle=0x1_4000_0100, trustlet_id=9)
        assert 0x1_4000_0100 not in rig.monitor.admitted
    finally:
        rig.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [(SkProcess.TRUSTLET_ID, 7), (SkProcess.MAILBOX_KEY, 0x4141), (SkProcess.DEBUG, 1)],
    ids=["trustlet-id", "mailbox-key", "debug-policy"],
)
def test_6_a_k1_write_to_a_secure_process_object_is_caught(field: Field, value: int) -> None:
    """SKPROCESS pages (and their frame lists and mailbox frames) come from the SK's pool after
    attach; the monitor re-reads them from the handle table after each accepted secure call and
    flags a change made by code a host entry ran in VTL1 (a sixth audit's K1 writes)."""
    rig = attached("vbs", stop=False)
    try:
        process = next(p for p in rig.sk.host_processes(rig.machine.ram).values() if p.object_va)
        vp = rig.vp
        with rig.monitor.step(f"K1 writes SKPROCESS.{field.name}"):
            previous = vp.host_entry(1)
            try:
                vp.cpu.write(process.object_va + field.offset, value.to_bytes(field.size, "little"))
            finally:
                vp.host_entry(previous)
        assert "skprocess" in _caught(rig, 6)
    finally:
        rig.close()


def _k1_write(rig: Rig, gpa: int, data: bytes) -> bytes:
    """A K1 payload's write to SK memory at ``gpa`` (through the SK's direct map); returns
    what was there."""
    vp = rig.vp
    va = rig.sk.space.phys_va(0) + gpa
    previous = vp.host_entry(1)
    try:
        old = vp.cpu.read(va, len(data))
        vp.cpu.write(va, data)
    finally:
        vp.host_entry(previous)
    return old


@pytest.mark.parametrize("label", ["processor-blocks", "frame-pool", "own-pages[0]"])
def test_6_a_k1_write_to_scratch_sk_state_is_caught(label: str) -> None:
    """The SK rewrites its per-processor blocks, frame pool and own-page bitmap inside its own
    calls; code a host entry runs in VTL1 may not (a sixth audit's K1 writes went unflagged)."""
    rig = attached("vbs", stop=False)
    try:
        page = next(p for p, name in rig.monitor.pages.labels.items() if name == label)
        with rig.monitor.step(f"K1 writes {label}"):
            _k1_write(rig, (page << PAGE_SHIFT) + 0xFF8, b"\x5a" * 8)
        assert "host ran in VTL1" in _caught(rig, 6)
    finally:
        rig.close()


def test_6_a_static_page_changed_and_restored_within_a_step_is_caught() -> None:
    """A K1 payload hooks the secure-call dispatch table and a second one puts it back, both in
    one step: the change is judged as each host entry leaves VTL1, not only at the step's end."""
    rig = attached("vbs", stop=False)
    try:
        page = next(
            p for p, name in rig.monitor.pages.labels.items() if name == "securecall-dispatch[0]"
        )
        with rig.monitor.step("K1 hooks the dispatch table, then restores it"):
            old = _k1_write(rig, page << PAGE_SHIFT, b"\x41" * 8)
            _k1_write(rig, page << PAGE_SHIFT, old)
        assert "securecall-dispatch" in _caught(rig, 6)
    finally:
        rig.close()
