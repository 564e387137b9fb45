"""Random secure-call blocks for the HVCI services, from VTL0 ring 0 (a compromised NT).

Whatever the blocks, no Python exception other than GuestTermination escapes, the processor is
back in VTL0 after every call, and no VTL0 page is ever both writable and kernel-executable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vbsim.hw.faults import GuestTermination
from vbsim.hw.slat import KX, UX, R, W
from vbsim.image import parse_image
from vbsim.nt import drivers
from vbsim.sk import callargs
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.kernel import FIRST_HANDLE
from vbsim.sk.services.hvci import image_layout
from vbsim.sk.sscn import Service

from .kit import Env, make_env, wkx_pages

SERVICES = [
    Service.CREATE_SECURE_IMAGE,
    Service.FINISH_SECURE_IMAGE_VALIDATION,
    Service.LOAD_DRIVER,
    Service.UNLOAD_DRIVER,
    Service.MAKE_PROTECTED_PAGE_WRITABLE,
    Service.MAKE_PROTECTED_PAGE_EXECUTABLE,
]


@dataclass
class Rig:
    env: Env
    symbols: dict[str, int] = field(default_factory=dict)


_rig: dict[str, Rig] = {}


def _new_rig() -> Rig:
    """A booted vbs-hvci machine plus what a real attacker would stage in VTL0: a signed image
    in file pages with its PFN list, and the same image mapped (unvalidated) with its list."""
    env = make_env("vbs-hvci")
    nt, vp = env.nt, env.vp
    assert env.system.machine is not None
    image = nt.driver_store[drivers.SAMPLE_DRIVER]
    file_pfns = []
    for offset in range(0, len(image), 4096):
        va, gpa = nt.alloc_kernel_page(vp.cpu)
        vp.write(va, image[offset : offset + 4096])
        file_pfns.append(gpa >> 12)
    parsed = parse_image(image)
    layout = image_layout(image, parsed)
    assert layout is not None
    mapped = drivers.map_image(nt, vp.cpu, "fuzz.sys", parsed, layout)
    symbols = {
        "image_size": len(image),
        "file_list": drivers._pfn_list_page(nt, vp.cpu, file_pfns),
        "file_count": len(file_pfns),
        "file_pfn": file_pfns[0],
        "mapped_list": drivers._pfn_list_page(nt, vp.cpu, mapped.pfns),
        "mapped_count": len(mapped.pfns),
        "code_pfn": mapped.code_pfns[0],
        "data_pfn": mapped.data_pfns[0],
        "nt_code": nt.space.code_pages[0],
        "nt_data": nt.data_gpa >> 12,
        "nt_root": nt.space.root >> 12,
        "last_ram": env.system.machine.ram.pages - 1,
        "past_ram": env.system.machine.ram.pages,
        "first_handle": FIRST_HANDLE,
        "handle": 0,  # the last handle CREATE_SECURE_IMAGE returned
        "rx": R | KX | UX,
        "rwx": R | W | KX | UX,
        "rw": R | W | UX,
        "kx": KX,
        "max": (1 << 64) - 1,
    }
    return Rig(env, symbols)


def _rig_now() -> Rig:
    rig = _rig.get("rig")
    if rig is None:
        rig = _rig["rig"] = _new_rig()
    return rig


Value = int | str
SYMBOLS = [
    "image_size",
    "file_list",
    "file_count",
    "file_pfn",
    "mapped_list",
    "mapped_count",
    "code_pfn",
    "data_pfn",
    "nt_code",
    "nt_data",
    "nt_root",
    "last_ram",
    "past_ram",
    "first_handle",
    "handle",
    "rx",
    "rwx",
    "rw",
    "kx",
    "max",
]
#: Well-formed calls (the driver-load sequence and the transitions), which the fuzzer mutates.
TEMPLATES: list[tuple[Service, list[Value]]] = [
    (Service.CREATE_SECURE_IMAGE, ["image_size", "file_list", "file_count"]),
    (Service.FINISH_SECURE_IMAGE_VALIDATION, ["handle", "mapped_list", "mapped_count"]),
    (Service.LOAD_DRIVER, ["handle"]),
    (Service.UNLOAD_DRIVER, ["handle"]),
    (Service.MAKE_PROTECTED_PAGE_WRITABLE, ["code_pfn"]),
    (Service.MAKE_PROTECTED_PAGE_EXECUTABLE, ["code_pfn", "rx"]),
    (Service.MAKE_PROTECTED_PAGE_EXECUTABLE, ["code_pfn", "rwx"]),
    (Service.MAKE_PROTECTED_PAGE_WRITABLE, ["nt_code"]),
    (Service.MAKE_PROTECTED_PAGE_EXECUTABLE, ["nt_code", 0]),
]
value: st.SearchStrategy[Value] = st.one_of(
    st.integers(min_value=0, max_value=(1 << 64) - 1),
    st.integers(min_value=0, max_value=4096),
    st.sampled_from(SYMBOLS),
)
random_block = st.tuples(st.sampled_from(SERVICES), st.lists(value, max_size=12))


@st.composite
def mutated_template(draw: st.DrawFn) -> tuple[Service, list[Value]]:
    service, fields = draw(st.sampled_from(TEMPLATES))
    fields = list(fields)
    if draw(st.booleans()):
        fields[draw(st.integers(0, len(fields) - 1))] = draw(value)
    return service, fields


block = st.tuples(
    st.one_of(random_block, mutated_template(), mutated_template()),
    st.integers(min_value=0, max_value=0xFFFF_FFFF),  # secure thread cookie
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(block, min_size=1, max_size=8))
def test_random_hvci_secure_calls_never_escape_and_never_make_w_plus_kx(
    blocks: list[tuple[tuple[Service, list[Value]], int]],
) -> None:
    rig = _rig_now()
    env = rig.env
    assert env.nt.vsl is not None
    table = env.nt.vsl.table
    try:
        for (service, raw), cookie in blocks:
            fields = [rig.symbols[v] if isinstance(v, str) else v for v in raw]
            args = SecureCallArgs(callargs.OP_INVOKE_SERVICE, table.number[service], cookie, fields)
            reply = env.nt.vsl.call_raw(env.vp.cpu, args)
            assert env.vp.vtl == 0 and env.vp.cpl == 0
            if service is Service.CREATE_SECURE_IMAGE and reply.fields[0] == 0:
                rig.symbols["handle"] = reply.fields[1]
    except GuestTermination:
        _rig.pop("rig", None)  # the machine stopped: the next example boots a fresh one
        assert wkx_pages(env.system) == []
        return
    assert wkx_pages(env.system) == []
    # The SK's own bookkeeping agrees with the hypervisor's SLAT.
    sk = env.system.sk
    assert sk is not None and env.system.machine is not None and env.system.machine.slat
    from vbsim.invariants.skstate import hvci_view

    state = hvci_view(env.system.machine.ram, sk)  # as it stands in VTL1 memory
    slat = env.system.machine.slat
    for pfn in range(slat.pages):
        if state.rights[pfn] != 0xF:
            assert slat.rights(0, pfn) & state.rights[pfn] == slat.rights(0, pfn), pfn
