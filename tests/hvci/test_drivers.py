"""Driver loading: SKCI under HVCI, DSE without it, and the DSE-disable attack."""

from __future__ import annotations

import pytest

from vbsim.hw.faults import Bugcheck
from vbsim.hw.pagetable import PageTables
from vbsim.hw.slat import KX, UX, R, W
from vbsim.hw.x86 import PTE_ADDR_MASK
from vbsim.image import parse_image
from vbsim.invariants.skstate import hvci_view
from vbsim.nt import drivers
from vbsim.nt.drivers import (
    DO_ENTRY_MARK,
    ENTRY_MARK,
    IOCTL_READ8,
    OTHER_ROOT_DRIVER,
    RUNS,
    SAMPLE_DRIVER,
    STATUS_IMAGE_ALREADY_LOADED,
    UNSIGNED_DRIVER,
    VULNERABLE_DRIVER,
)
from vbsim.ntstatus import BugCheck, NtStatus
from vbsim.policy import preset
from vbsim.sk import objects
from vbsim.sk.services.hvci import PageState, image_layout
from vbsim.sk.sscn import Service

from .kit import USER, Env, direct_va, make_env, wkx_pages

PRESETS = ["vbs-hvci", "vbs", "vbs-off"]


def entry_runs(name: str) -> int:
    tag = next(spec.tag for spec in drivers.DRIVERS if spec.name == name)
    return RUNS[f"drv.{tag}.DriverEntry"]


@pytest.mark.parametrize("name", PRESETS)
def test_signed_driver_loads_and_driver_entry_runs(name: str) -> None:
    env = make_env(name)
    before = entry_runs(SAMPLE_DRIVER)
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS
    assert entry_runs(SAMPLE_DRIVER) == before + 1
    driver = env.driver(SAMPLE_DRIVER)
    assert isinstance(driver, drivers.LoadedDriver)
    # DriverEntry's store reached guest RAM (read as the kernel would, through the VP).
    assert env.vp.read_u64(driver.object_va + DO_ENTRY_MARK) == ENTRY_MARK
    # Its IoControl runs too (echo).
    assert env.ioctl(SAMPLE_DRIVER, 0x1234, 0, 77) == (NtStatus.SUCCESS, 77)
    if env.hvci:
        assert all(env.rights(pfn) == R | KX | UX for pfn in driver.code_pfns)
        assert all(env.rights(pfn) == R | W for pfn in driver.data_pfns)
        verified = [e for e in env.events("skci", "skci.signature") if e.outcome == "verified"]
        assert verified and verified[-1].detail["image"] == SAMPLE_DRIVER
        assert env.events("hvci", "hvci.load-driver")
        assert wkx_pages(env.system) == []
    else:
        assert [e.outcome for e in env.events("driver", "dse")][-1] == "verified"


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize(
    ("driver", "failure"),
    [(UNSIGNED_DRIVER, "no-signature"), (OTHER_ROOT_DRIVER, "untrusted-root")],
)
def test_unsigned_and_untrusted_root_drivers_are_refused(
    name: str, driver: str, failure: str
) -> None:
    env = make_env(name)
    before = entry_runs(driver)
    assert env.load(driver) == NtStatus.INVALID_IMAGE_HASH
    assert entry_runs(driver) == before
    assert env.find_driver(driver) is None
    if env.hvci:
        [refusal] = [e for e in env.events("skci", "skci.signature") if e.outcome == "refused"]
        assert refusal.vtl == 1 and refusal.detail["failure"] == failure
        mapped = [e for e in env.events("driver", "mm.map-image") if e.detail["driver"] == driver]
        assert not mapped  # never even mapped
    else:
        [refusal] = [e for e in env.events("driver", "dse") if e.outcome == "refused"]
        assert refusal.vtl == 0 and refusal.detail["failure"] == failure


def test_loading_needs_the_load_driver_privilege() -> None:
    env = make_env("vbs-off")
    user = env.nt.create_process(env.vp.cpu, "user.exe", USER)
    buffer = env.nt.allocate(env.vp.cpu, user, 4096).base
    entries = env.nt.map_code(env.vp.cpu, user, ["test.hvci.load_driver"])
    run = env.nt.run_user(env.vp.cpu, user, entries["test.hvci.load_driver"], buffer, SAMPLE_DRIVER)
    assert run.returned == NtStatus.PRIVILEGE_NOT_HELD
    assert env.events("driver", "privilege")


def test_unknown_and_already_loaded_drivers() -> None:
    env = make_env("vbs-hvci")
    assert env.load("nope.sys") == NtStatus.OBJECT_NAME_NOT_FOUND
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS
    assert env.load(SAMPLE_DRIVER) == STATUS_IMAGE_ALREADY_LOADED


def test_the_vulnerable_driver_reads_kernel_memory_for_anyone_who_asks() -> None:
    env = make_env("vbs-hvci")
    assert env.load(VULNERABLE_DRIVER) == NtStatus.SUCCESS
    status, value = env.ioctl(VULNERABLE_DRIVER, IOCTL_READ8, drivers.ci_options_va(env.nt))
    assert (status, value) == (NtStatus.SUCCESS, drivers.CI_OPTIONS_ENFORCING)


def test_under_vbs_kdp_protects_g_ci_options_so_the_write_bugchecks() -> None:
    """KDP needs VBS only: CI's CiPolicy section is read-only under vbs (no HVCI) as well, so the
    classic DSE-disable store is an EPT violation and g_CiOptions stays enforcing."""
    env = make_env("vbs")
    ci = drivers.ci_options_va(env.nt)
    with pytest.raises(Bugcheck):
        env.k0_write(ci, 0)
    assert env.system.machine is not None
    leaf = PageTables(env.nt.phys(env.vp), env.nt.space.root).lookup(ci)
    assert leaf is not None
    gpa = (leaf & PTE_ADDR_MASK) | (ci & 0xFFF)
    assert env.system.machine.ram.read_u64(gpa) == drivers.CI_OPTIONS_ENFORCING


def test_under_vbs_the_unprotected_se_ci_callbacks_swap_loads_an_unsigned_driver() -> None:
    """What still works under VBS without HVCI (Fortinet 2022; helz.dev 2025): point
    SeCiCallbacks.CiValidateImageHeader, in ntoskrnl's unprotected .data, at a routine that
    returns STATUS_SUCCESS; ci.dll is never asked."""
    from vbsim.nt.layouts import SE_CI_CALLBACKS

    env = make_env("vbs")
    callback = drivers.se_ci_callbacks_va(env.nt) + SE_CI_CALLBACKS.CiValidateImageHeader.offset
    always_ok = env.nt.space.routines[drivers.ZW_FLUSH_INSTRUCTION_CACHE]
    assert env.k0_write(callback, always_ok) == NtStatus.SUCCESS
    before = entry_runs(UNSIGNED_DRIVER)
    dse_before = len(env.events("driver", "dse"))
    assert env.load(UNSIGNED_DRIVER) == NtStatus.SUCCESS
    assert entry_runs(UNSIGNED_DRIVER) == before + 1
    assert len(env.events("driver", "dse")) == dse_before


@pytest.mark.parametrize("name", ["vbs-off", "legacy-2019"])
def test_zeroing_g_ci_options_lets_an_unsigned_driver_load_and_run(name: str) -> None:
    env = make_env(name)
    ci = drivers.ci_options_va(env.nt)
    assert env.load(UNSIGNED_DRIVER) == NtStatus.INVALID_IMAGE_HASH
    assert env.k0_write(ci, 0) == NtStatus.SUCCESS  # the K0 data attack
    assert env.k0_read(ci) == 0
    before = entry_runs(UNSIGNED_DRIVER)
    assert env.load(UNSIGNED_DRIVER) == NtStatus.SUCCESS
    assert entry_runs(UNSIGNED_DRIVER) == before + 1
    assert [e.outcome for e in env.events("driver", "dse")][-1] == "skipped"


def test_zeroing_g_ci_options_is_moot_under_hvci() -> None:
    # KDP off: isolate HVCI (a KDP-protected g_CiOptions would stop the write itself).
    env = make_env(preset("vbs-hvci").with_changes(kdp=False))
    ci = drivers.ci_options_va(env.nt)
    assert env.k0_write(ci, 0) == NtStatus.SUCCESS
    assert env.k0_read(ci) == 0
    before = entry_runs(UNSIGNED_DRIVER)
    assert env.load(UNSIGNED_DRIVER) == NtStatus.INVALID_IMAGE_HASH
    assert entry_runs(UNSIGNED_DRIVER) == before
    assert [e.outcome for e in env.events("skci", "skci.signature")][-1] == "refused"
    assert wkx_pages(env.system) == []


def test_dse_disable_attack_never_runs_unsigned_code_under_the_vbs_hvci_preset() -> None:
    env = make_env("vbs-hvci")
    before = entry_runs(UNSIGNED_DRIVER)
    try:
        env.k0_write(drivers.ci_options_va(env.nt), 0)
        assert env.load(UNSIGNED_DRIVER) == NtStatus.INVALID_IMAGE_HASH
    except Bugcheck:
        pass  # KDP may protect g_CiOptions: the write itself is then the end
    assert entry_runs(UNSIGNED_DRIVER) == before


def test_unsigned_code_that_nt_maps_itself_never_executes_under_hvci() -> None:
    env = make_env("vbs-hvci")
    image = env.nt.driver_store[UNSIGNED_DRIVER]
    parsed = parse_image(image)
    layout = image_layout(image, parsed)
    assert layout is not None
    driver = drivers.map_image(env.nt, env.vp.cpu, UNSIGNED_DRIVER, parsed, layout)
    assert not any(env.rights(pfn) & KX for pfn in driver.pfns)
    before = entry_runs(UNSIGNED_DRIVER)
    with pytest.raises(Bugcheck) as stop:
        drivers.start_driver(env.nt, env.vp.cpu, driver)
    assert entry_runs(UNSIGNED_DRIVER) == before  # the body never ran
    # NT calls DriverInit through kernel CFG, which refuses first: the entry is in no image's
    # GuardCFFunctionTable (vbsim.nt.kcfg).  A call without the guard reaches the fetch:
    assert stop.value.code == BugCheck.KERNEL_SECURITY_CHECK_FAILURE and stop.value.vtl == 0
    with pytest.raises(Bugcheck) as stop:
        env.vp.cpu.call(driver.entry, driver.object_va)
    assert entry_runs(UNSIGNED_DRIVER) == before
    assert stop.value.code == BugCheck.KMODE_EXCEPTION_NOT_HANDLED and stop.value.vtl == 0
    denied = [e for e in env.events("access", "slat") if e.outcome == "denied"]
    assert denied[-1].detail["access"] == "execute"
    assert denied[-1].detail["gpa"] >> 12 in driver.code_pfns
    assert [e.outcome for e in env.events("intercept", "slat")][-1] == "refused"


@pytest.mark.parametrize("name", ["vbs", "vbs-off"])
def test_unsigned_code_that_nt_maps_itself_executes_without_hvci(name: str) -> None:
    env = make_env(name)
    image = env.nt.driver_store[UNSIGNED_DRIVER]
    parsed = parse_image(image)
    layout = image_layout(image, parsed)
    assert layout is not None
    driver = drivers.map_image(env.nt, env.vp.cpu, UNSIGNED_DRIVER, parsed, layout)
    before = entry_runs(UNSIGNED_DRIVER)
    assert drivers.start_driver(env.nt, env.vp.cpu, driver) == NtStatus.SUCCESS
    assert entry_runs(UNSIGNED_DRIVER) == before + 1


def _create_and_map() -> tuple[Env, drivers.LoadedDriver, int]:
    """NT's first two steps by hand: CREATE_SECURE_IMAGE, then the mapping."""
    env = make_env("vbs-hvci")
    image = env.nt.driver_store[SAMPLE_DRIVER]
    status, handle = drivers._create_secure_image(env.nt, env.vp.cpu, image)
    assert status == NtStatus.SUCCESS and handle
    parsed = parse_image(image)
    layout = image_layout(image, parsed)
    assert layout is not None
    driver = drivers.map_image(env.nt, env.vp.cpu, SAMPLE_DRIVER, parsed, layout)
    return env, driver, handle


def test_a_code_page_that_differs_from_the_signed_image_never_gets_kx() -> None:
    e, driver, handle = _create_and_map()
    code_pfn = driver.code_pfns[0]
    e.vp.write(direct_va(code_pfn) + 64, b"\x0f\x3fVBSM\x01" + bytes(25))  # NT tampers
    status = drivers._validate_mapped(e.nt, e.vp.cpu, driver, handle)
    assert status == NtStatus.INVALID_IMAGE_HASH
    [refusal] = [x for x in e.events("skci", "skci.page-hash") if x.outcome == "refused"]
    assert refusal.detail["first_gpa"] >> 12 == code_pfn
    assert e.rights(code_pfn) == R | W | UX  # back to unvalidated: writable, never KX
    sk, machine = e.system.sk, e.system.machine
    assert sk is not None and machine is not None
    assert handle not in objects.host_entries(machine.ram.read, sk)  # NT's cleanup closed it
    assert wkx_pages(e.system) == []


def test_hashed_pages_are_locked_until_load_driver() -> None:
    env, driver, handle = _create_and_map()
    assert env.nt.vsl is not None
    list_pfn = drivers._pfn_list_page(env.nt, env.vp.cpu, driver.pfns)
    status, _ = env.nt.vsl.call(
        env.vp.cpu, Service.FINISH_SECURE_IMAGE_VALIDATION, handle, list_pfn, len(driver.pfns)
    )
    assert status == NtStatus.SUCCESS
    code_pfn = driver.code_pfns[0]
    assert env.rights(code_pfn) == R  # neither W nor KX between the hash and LOAD_DRIVER
    sk = env.system.sk
    assert sk is not None
    assert env.system.machine is not None
    assert hvci_view(env.system.machine.ram, sk).states[code_pfn] == PageState.LOCKED
    with pytest.raises(Bugcheck):
        env.vp.write(direct_va(code_pfn), b"\xcc")  # TOCTOU attempt: SLAT refuses the write


def test_unload_gives_the_pages_back_unvalidated() -> None:
    env = make_env("vbs-hvci")
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS
    driver = env.driver(SAMPLE_DRIVER)
    assert isinstance(driver, drivers.LoadedDriver)
    pfns = list(driver.pfns)
    assert drivers.unload_driver(env.nt, env.vp.cpu, SAMPLE_DRIVER) == NtStatus.SUCCESS
    assert all(env.rights(pfn) == R | W | UX for pfn in pfns)
    assert env.events("hvci", "hvci.unload")
    # And it loads again, validated afresh.
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS
    assert wkx_pages(env.system) == []


def test_hvci_never_gives_back_rights_kdp_took() -> None:
    from vbsim.nt import kdp

    env = make_env("vbs-hvci")
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS
    driver = env.driver(SAMPLE_DRIVER)
    assert isinstance(driver, drivers.LoadedDriver)
    index = next(i for i in range(len(driver.pfns)) if i not in driver.code_pages and i > 0)
    pfn = driver.pfns[index]
    assert env.rights(pfn) == R | W
    status = kdp.mm_protect_driver_section(env.nt, env.vp.cpu, driver.base + index * 4096)
    assert status == NtStatus.SUCCESS and env.rights(pfn) == R
    # The section that contains the address (MS Learn: MmProtectDriverSection "protects the
    # section containing the specified address"; Size "should be set to 0"), found from the
    # image's own section table: .data (page 2) alone, not .rsrc or .edata after it.
    others = [i for i in range(index + 1, len(driver.pfns)) if i not in driver.code_pages]
    assert others and all(env.rights(driver.pfns[i]) == R | W for i in others)
    assert drivers.unload_driver(env.nt, env.vp.cpu, SAMPLE_DRIVER) == NtStatus.SUCCESS
    assert env.rights(pfn) == R  # still KDP's
    assert env.events("hvci", "hvci.kdp")[-1].outcome == "kept-read-only"
    assert wkx_pages(env.system) == []


def test_mm_protect_driver_section_takes_no_size() -> None:
    """MS Learn MmProtectDriverSection: Size "is currently reserved for future usage and should
    be set to 0"; "a non-zero size" is STATUS_INVALID_PARAMETER and nothing is protected."""
    from vbsim.nt import kdp

    env = make_env("vbs-hvci")
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS
    driver = env.driver(SAMPLE_DRIVER)
    assert isinstance(driver, drivers.LoadedDriver)
    index = next(i for i in range(len(driver.pfns)) if i not in driver.code_pages and i > 0)
    va = driver.base + index * 4096
    for size in (1, 8, 4096):
        status = kdp.mm_protect_driver_section(env.nt, env.vp.cpu, va, size)
        assert status == NtStatus.INVALID_PARAMETER, size
    assert env.rights(driver.pfns[index]) == R | W
    assert kdp.mm_protect_driver_section(env.nt, env.vp.cpu, va) == NtStatus.SUCCESS
    assert env.rights(driver.pfns[index]) == R


def test_a_kdp_page_cannot_be_handed_to_skci_as_an_image_page() -> None:

    env, driver, handle = _create_and_map()
    assert env.nt.vsl is not None
    index = next(i for i in range(len(driver.pfns)) if i not in driver.code_pages and i > 0)
    # The image is mapped, not yet loaded (MmProtectDriverSection knows only loaded images):
    # a K0 caller issues the static-KDP secure call for the page itself.
    va = driver.base + index * 4096
    status, _ = env.nt.vsl.call(env.vp.cpu, Service.PROTECT_KERNEL_DATA_PAGE, va, 1, 0)
    assert status == NtStatus.SUCCESS
    assert (
        drivers._validate_mapped(env.nt, env.vp.cpu, driver, handle) == NtStatus.INVALID_PARAMETER
    )
    assert env.events("hvci", "hvci.page-state")[-1].outcome == "refused"
    assert env.rights(driver.pfns[index]) == R
    assert all(env.rights(pfn) == R | W | UX for pfn in driver.code_pfns)


def _loaded_sample(env: Env) -> drivers.LoadedDriver:
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS
    driver = env.driver(SAMPLE_DRIVER)
    assert isinstance(driver, drivers.LoadedDriver)
    return driver


def test_mm_protect_driver_section_refuses_code_and_headers() -> None:
    """MS Learn: "executable sections are not supported" (STATUS_INVALID_PAGE_PROTECTION); the
    headers are no section of the image's table ([model] STATUS_INVALID_PARAMETER)."""
    from vbsim.nt import kdp

    env = make_env("vbs-hvci")
    driver = _loaded_sample(env)
    code = min(driver.code_pages)
    status = kdp.mm_protect_driver_section(env.nt, env.vp.cpu, driver.base + code * 4096)
    assert status == NtStatus.INVALID_PAGE_PROTECTION
    assert kdp.mm_protect_driver_section(env.nt, env.vp.cpu, driver.base) == (
        NtStatus.INVALID_PARAMETER
    )
    assert all(env.rights(pfn) != R for pfn in driver.pfns)  # nothing was protected


def test_mm_protect_driver_section_reads_the_section_table_in_memory() -> None:
    """NT finds the section from the image headers mapped at DllBase: a kernel writer who
    widens .rsrc's VirtualSize there over .edata widens what KDP protects, and .data before it
    stays writable (the decision is data in RAM)."""
    from vbsim.nt import kdp
    from vbsim.nt.layouts import IMAGE_DOS_HEADER, IMAGE_NT_HEADERS64, IMAGE_SECTION_HEADER
    from vbsim.nt.layouts import read_field as field

    env = make_env("vbs-hvci")
    driver = _loaded_sample(env)
    cpu, base = env.vp.cpu, driver.base
    headers = base + field(cpu, base, IMAGE_DOS_HEADER.e_lfanew)
    table = (
        headers
        + IMAGE_NT_HEADERS64.OPTIONAL_HEADER_AT
        + field(cpu, headers, IMAGE_NT_HEADERS64.SizeOfOptionalHeader)
    )
    rsrc = next(
        table + row * IMAGE_SECTION_HEADER.SIZE
        for row in range(field(cpu, headers, IMAGE_NT_HEADERS64.NumberOfSections))
        if field(cpu, table + row * IMAGE_SECTION_HEADER.SIZE, IMAGE_SECTION_HEADER.VirtualAddress)
        == 0x3000
    )
    cpu.write_u32(rsrc + IMAGE_SECTION_HEADER.VirtualSize.offset, 2 * 4096)  # .rsrc + .edata
    assert kdp.mm_protect_driver_section(env.nt, cpu, base + 0x3000) == NtStatus.SUCCESS
    assert [env.rights(driver.pfns[i]) for i in (2, 3, 4)] == [R | W, R, R]


def test_mm_protect_driver_section_bugchecks_for_an_image_unlinked_from_the_module_list() -> None:
    """MiLookupDataTableEntry walks PsLoadedModuleList in RAM: a driver unlinked from it (as
    rootkits hide themselves) belongs to no loaded image, and MS Learn's 0x1100 bugcheck
    follows."""
    from vbsim.nt import kdp
    from vbsim.nt.layouts import DRIVER_OBJECT

    env = make_env("vbs-hvci")
    driver = _loaded_sample(env)
    cpu = env.vp.cpu
    entry = cpu.read_u64(driver.object_va + DRIVER_OBJECT.DriverSection.offset)
    flink, blink = cpu.read_u64(entry), cpu.read_u64(entry + 8)
    cpu.write_u64(blink, flink)  # Blink->Flink = Flink
    cpu.write_u64(flink + 8, blink)  # Flink->Blink = Blink
    with pytest.raises(Bugcheck) as stop:
        kdp.mm_protect_driver_section(env.nt, cpu, driver.base + 0x2000)
    assert stop.value.params[:1] == (0x1100,)


def test_a_data_only_image_is_on_the_module_list_and_kdp_reads_its_headers() -> None:
    """ci.dll's CiPolicy section is a section of an image NT lists (``lm`` shows ci.dll), with
    its headers at DllBase; MmProtectDriverSection finds it there and nowhere else: a section
    whose row a kernel writer marks executable is refused, and one whose module is unlinked
    bugchecks with 0x1100, as for any driver."""
    from vbsim.nt import kdp
    from vbsim.nt.drivers import find_module, host_modules
    from vbsim.nt.layouts import IMAGE_SECTION_HEADER
    from vbsim.nt.process import remove_entry

    env = make_env("vbs")
    assert env.system.machine is not None
    assert "ci.dll" in host_modules(env.system.machine.ram, env.nt)
    cpu = env.vp.cpu
    section = kdp.load_data_section(env.nt, cpu, "cfg.sys!.kdp", 1, b"\x01" * 8)
    again = kdp.load_data_section(env.nt, cpu, "cfg.sys!.kdp")  # found on the list, not reloaded
    assert (again.va, again.pfns) == (section.va, section.pfns)
    # the headers are mapped read-only at DllBase; a kernel writer edits them through the
    # direct map
    leaf = PageTables(env.nt.phys(cpu), env.nt.space.root).lookup(section.va - 4096)
    assert leaf is not None and not leaf & 0x2  # present, not writable
    headers = direct_va((leaf & PTE_ADDR_MASK) >> 12)
    row = headers + 0x80 + 0x18 + 0xF0  # e_lfanew, the COFF header, a PE32+ optional header
    characteristics = row + IMAGE_SECTION_HEADER.Characteristics.offset
    cpu.write_u32(characteristics, IMAGE_SECTION_HEADER.DATA | IMAGE_SECTION_HEADER.MEM_EXECUTE)
    assert kdp.mm_protect_driver_section(env.nt, cpu, section.va) == (
        NtStatus.INVALID_PAGE_PROTECTION
    )
    cpu.write_u32(characteristics, IMAGE_SECTION_HEADER.DATA)
    remove_entry(cpu, find_module(env.nt, cpu, "cfg.sys"))
    with pytest.raises(Bugcheck) as stop:
        kdp.mm_protect_driver_section(env.nt, cpu, section.va)
    assert stop.value.params[:1] == (0x1100,)
