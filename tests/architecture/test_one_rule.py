"""DESIGN.md's one rule, enforced: guest code holds only an architectural CPU (issue 10, part 2).

Two halves:

- static (``checker``): every module of ``vbsim.nt``, ``vbsim.sk``, ``vbsim.ium`` and every step
  of the catalogue and of ``vbsim.guest``, checked file by file; planted violations prove the
  checker sees what it must;
- runtime: the ``Cpu`` a guest routine receives has exactly ``vbsim.hw.cpu.SURFACE`` and nothing
  on it yields a platform object; the kernel images behind GS reference no platform object; and
  and a name beyond the surface is an AttributeError (the catalogue and the demo run without one).
"""

from __future__ import annotations

import functools
import io
import mmap
import textwrap
import types
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from architecture import checker, debt
from vbsim.attacks.catalogue import SCENARIOS
from vbsim.attacks.context import AttackContext
from vbsim.attacks.model import PRESET_ORDER
from vbsim.attacks.runner import run
from vbsim.boot.disk import Disk
from vbsim.hv.hypervisor import Hypervisor
from vbsim.hw.cpu import SURFACE, Cpu
from vbsim.hw.paging import PagingLayer
from vbsim.hw.ram import FrameAllocator, GuestRam
from vbsim.hw.regs import PrivateState
from vbsim.hw.slat import Slat
from vbsim.hw.vp import VirtualProcessor
from vbsim.machine import Machine
from vbsim.policy import Policy, preset
from vbsim.trace import Trace

ROOT = checker.SRC
GUEST_FILES = checker.guest_files()
ALL_VIOLATIONS = checker.by_file(checker.check_files(GUEST_FILES))
#: What is not yet true of the rule, recorded (tests/architecture/debt.py): a ratchet.
DEBT = debt.load()


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT.parent))


# -- static -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", GUEST_FILES, ids=_rel)
def test_guest_module_holds_only_a_cpu(path: Path) -> None:
    """One test per guest file, so a report names each file that still reaches the platform.

    A violation fails unless ``known_debt.json`` records it (the debt issue 10 has not paid yet);
    a recorded one that no longer occurs fails too, so the list only shrinks."""
    found = ALL_VIOLATIONS.get(str(path), [])
    counts = Counter(checker.violation_key(v.function, v.rule, v.detail) for v in found)
    allowed = Counter(DEBT["violations"].get(_rel(path), {}))
    new, fixed = debt.compare(counts, allowed)
    lines = {checker.violation_key(v.function, v.rule, v.detail): v.line for v in found}
    assert not new, f"{_rel(path)}: {len(new)} new violation(s)\n" + "\n".join(
        f"  {lines.get(key, '?')}: {key}" for key in new
    )
    assert not fixed, f"{_rel(path)}: fixed, drop from known_debt.json: {fixed}"


def test_the_checker_covers_every_guest_package() -> None:
    names = {checker.module_name(p) for p in GUEST_FILES}
    for package in ("vbsim.nt.kernel", "vbsim.sk.kernel", "vbsim.ium.iumbase", "vbsim.guest.bare"):
        assert package in names
    assert sum(n.startswith("vbsim.attacks.catalogue.") for n in names) >= 5


CATALOGUE_A1 = ROOT / "vbsim/attacks/catalogue/a01_a04_vtl1_boundary.py"


def _planted(source: str, function: str, line: str) -> str:
    """``source`` with ``line`` inserted as the first statement of ``function``'s body."""
    lines = source.splitlines()
    start = next(i for i, text in enumerate(lines) if text.startswith(f"def {function}("))
    # The body begins after the signature (which may span lines) and the docstring, if any.
    body = next(i for i in range(start, len(lines)) if lines[i].rstrip().endswith(":")) + 1
    return "\n".join([*lines[:body], f"    {line}", *lines[body:]])


def test_steps_are_found_in_a_catalogue_module() -> None:
    steps = checker.steps_of(CATALOGUE_A1)
    # Cpu-typed payloads are steps; the orchestration and the goals are host side.
    assert {"_map_and_copy", "_reconfigure", "_tamper", "_unknown_sscn"} <= set(steps)
    assert not {"a1_steps", "a1_goal", "a2_goal", "a4_goal"} & set(steps)


def test_planted_ram_read_in_a_catalogue_step_is_caught() -> None:
    source = CATALOGUE_A1.read_text()
    module = "vbsim.attacks.catalogue.a01_a04_vtl1_boundary"
    before = {(v.function, v.rule) for v in checker.check_source(source, module)}
    planted = _planted(source, "_map_and_copy", "cpu.ram.read(0x1000, 8)")
    after = checker.check_source(planted, module)
    caught = [v for v in after if v.function == "_map_and_copy" and ".ram" in v.detail]
    assert caught, "a vp.ram.read(...) planted in a catalogue step went unnoticed"
    assert ("_map_and_copy", "attribute") not in before


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("cpu.ram.read(0, 8)", "attribute"),
        ("cpu._vp.ram.frames.alloc('x')", "cpu-private"),
        ("cpu.__vp__.switch_vtl(1)", "introspection"),
        ("cpu.__eq__(cpu)", "cpu-private"),
        ("cpu.read.__self__.switch_vtl(1)", "introspection"),
        ("import vbsim.machine", "import"),
        ("from vbsim.hw.ram import GuestRam", "import"),
        ("import gc", "import"),
        ("getattr(cpu, 'banks')", "attribute"),
        ("vars(cpu)", "introspection"),
        ("a1_goal(cpu)", "host-call"),
    ],
)
def test_planted_violations_of_each_kind_are_caught(line: str, rule: str) -> None:
    source = _planted(CATALOGUE_A1.read_text(), "_tamper", line)
    found = checker.check_source(source, "vbsim.attacks.catalogue.a01_a04_vtl1_boundary")
    assert any(v.function == "_tamper" and v.rule == rule for v in found), found


def test_host_side_code_of_a_catalogue_module_may_read_ram() -> None:
    """The same line in a goal check is not a violation: goals stand outside the machine."""
    module = "vbsim.attacks.catalogue.a01_a04_vtl1_boundary"
    source = CATALOGUE_A1.read_text()
    before = checker.check_source(source, module)
    planted = _planted(source, "a1_goal", "ctx.booted.machine.ram.read(0x1000, 8)")
    assert checker.check_source(planted, module) == before


def test_a_payload_lambda_is_a_step() -> None:
    source = textwrap.dedent(
        """
        from vbsim.attacks.context import AttackContext

        def steps(ctx: AttackContext) -> None:
            ctx.kernel(lambda cpu: cpu.banks[1])
        """
    )
    found = checker.check_source(source, "vbsim.attacks.catalogue.planted")
    assert [v.rule for v in found] == ["attribute"]


def test_planted_violation_in_a_kernel_module_is_caught() -> None:
    source = textwrap.dedent(
        """
        from vbsim.hw.cpu import Cpu

        def service(cpu: Cpu) -> int:
            nt = cpu.kernel()
            return nt.machine.ram.read_u64(0)
        """
    )
    found = checker.check_source(source, "vbsim.nt.planted")
    assert {v.detail for v in found} == {
        ".machine reaches the platform",
        ".ram reaches the platform",
    }
    clean = source.replace("nt.machine.ram.read_u64(0)", "cpu.read_u64(0xFFFF_8000_0000_0000)")
    assert checker.check_source(clean, "vbsim.nt.planted") == []


def test_cross_kernel_imports_are_caught() -> None:
    found = checker.check_source("from vbsim.sk.kernel import SecureKernel\n", "vbsim.nt.planted")
    assert [v.rule for v in found] == ["import"]
    assert checker.check_source("from vbsim.sk.sscn import Service\n", "vbsim.nt.planted") == []


# -- runtime ------------------------------------------------------------------------------------
#: What no guest-visible object may be or hold.
PLATFORM_TYPES: tuple[type, ...] = (
    Machine,
    GuestRam,
    mmap.mmap,
    memoryview,
    Slat,
    Hypervisor,
    VirtualProcessor,
    Policy,
    FrameAllocator,
    Trace,
    PrivateState,
    PagingLayer,
)


def _booted(name: str) -> AttackContext:
    policy = preset(name)
    ctx = AttackContext(policy, name, Disk.install(policy))
    ctx.boot()
    return ctx


def _seen_by_a_routine(ctx: AttackContext) -> Cpu:
    """The processor object a K0 routine is handed when it runs."""
    received: list[Any] = []
    ctx.kernel(lambda cpu: received.append(cpu))
    assert len(received) == 1
    assert isinstance(received[0], Cpu)
    return received[0]


@pytest.mark.parametrize("name", PRESET_ORDER)
def test_a_routine_cpu_has_exactly_the_surface(name: str) -> None:
    ctx = _booted(name)
    cpu = _seen_by_a_routine(ctx)
    exposed = {n for n in dir(cpu) if not (n.startswith("__") and n.endswith("__"))}
    assert exposed == SURFACE, (exposed - SURFACE, SURFACE - exposed)
    # What reading the surface yields: numbers, bound instructions, and the GS image.
    for attribute in sorted(SURFACE):
        value = getattr(cpu, attribute)
        assert not isinstance(value, PLATFORM_TYPES), attribute
    assert not any(isinstance(v, PLATFORM_TYPES) for v in cpu.xmm)
    seen = cpu.kernel() if cpu.cpl == 0 else None
    assert not isinstance(seen, PLATFORM_TYPES)
    for cr in (0, 3, 4):
        assert isinstance(cpu.read_cr(cr), int)


def _children(value: Any) -> Iterator[tuple[str, Any]]:
    """What an object refers to, without gc: attributes, slots, container items, the self of a
    bound method and the cells of a closure (a Python kernel could hide a reference in either)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"[{key!r}]", item
            if not isinstance(key, str | int):
                yield f"<key {key!r}>", key
        return
    if isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            yield f"[{index}]", item
        return
    if isinstance(value, types.MethodType):
        yield ".__self__", value.__self__
        yield ".__func__", value.__func__
        return
    if isinstance(value, types.FunctionType | types.BuiltinFunctionType):
        for index, cell in enumerate(getattr(value, "__closure__", None) or ()):
            try:
                yield f".<cell {index}>", cell.cell_contents
            except ValueError:
                continue
        return
    if isinstance(value, type | types.ModuleType):
        return
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict):
        yield from ((f".{k}", v) for k, v in attributes.items())
    for klass in type(value).__mro__:
        for slot in getattr(klass, "__slots__", ()):
            if isinstance(slot, str) and hasattr(value, slot):
                yield f".{slot}", getattr(value, slot)


_ATOMS = (int, float, str, bytes, bool, type(None), bytearray, complex, range)


def platform_references(root: object, label: str, depth: int = 8) -> list[str]:
    """Paths from ``root`` to platform objects, breadth first, each object visited once."""
    found: list[str] = []
    seen: set[int] = {id(root)}
    frontier: list[tuple[str, Any]] = [(label, root)]
    for _ in range(depth):
        following: list[tuple[str, Any]] = []
        for path, value in frontier:
            for step, child in _children(value):
                if isinstance(child, _ATOMS) or id(child) in seen:
                    continue
                seen.add(id(child))
                where = path + step
                if isinstance(child, PLATFORM_TYPES):
                    found.append(f"{where}: {type(child).__name__}")
                    continue
                following.append((where, child))
        frontier = following
    return found


@pytest.mark.parametrize("name", PRESET_ORDER)
def test_kernel_images_hold_no_platform_object(name: str) -> None:
    """Every image behind a GS base (NtKernel, SecureKernel, the bare kernels) keeps a symbol
    table, never the machine (what issue 10 has not yet moved is listed in known_debt.json)."""
    ctx = _booted(name)
    machine = ctx.booted.machine
    assert machine is not None and machine.ram.images
    found: list[str] = []
    for (vtl, block), image in sorted(machine.ram.images.items(), key=lambda item: item[0]):
        found += platform_references(image, f"VTL{vtl}@{block:#x}:{type(image).__name__}")
    # The debt names references without the processor-block address (it differs per preset).
    new = sorted({_unplaced(ref) for ref in found} - set(DEBT["image_references"]))
    assert not new, f"{len(new)} reference(s) to the platform not in the debt:\n" + "\n".join(new)


def test_the_image_reference_debt_lists_only_what_still_occurs() -> None:
    fixed = sorted(set(DEBT["image_references"]) - set(_all_image_references()))
    assert not fixed, f"fixed, drop from known_debt.json image_references: {fixed}"


def _unplaced(reference: str) -> str:
    """``VTL1@0xffff...:SecureKernel.space.ram: GuestRam`` → ``VTL1:SecureKernel.space.ram...``."""
    head, _, rest = reference.partition(":")
    return f"{head.split('@')[0]}:{rest}"


@functools.cache
def _all_image_references() -> tuple[str, ...]:
    """Every platform reference held by an image on any preset (what the debt may list)."""
    found: set[str] = set()
    for name in PRESET_ORDER:
        ctx = _booted(name)
        machine = ctx.booted.machine
        assert machine is not None
        for (vtl, block), image in machine.ram.images.items():
            label = f"VTL{vtl}@{block:#x}:{type(image).__name__}"
            found.update(_unplaced(ref) for ref in platform_references(image, label))
    return tuple(sorted(found))


def test_the_walker_finds_a_planted_reference() -> None:
    ram = GuestRam(1 << 20)
    try:

        class Kernel:
            def __init__(self) -> None:
                self.symbols = {"PsInitialSystemProcess": 0xFFFF_8000_0000_1000}
                self.hidden = [(lambda: ram)]

        assert platform_references(Kernel(), "k") == ["k.hidden[0].<cell 0>: GuestRam"]

        class Clean:
            __slots__ = ("table",)

            def __init__(self) -> None:
                self.table = {1: (2, "x")}

        assert platform_references(Clean(), "c") == []
    finally:
        ram.close()


def test_a_name_beyond_the_surface_is_an_attribute_error() -> None:
    """The Cpu has slots and nothing else: guest code reaching for the processor's platform
    state (``cpu.ram``, ``cpu.p``, ``cpu.banks`` ...) gets an AttributeError, not the object."""
    ctx = _booted("vbs")
    cpu = _seen_by_a_routine(ctx)
    for name in ("ram", "mm", "slat", "p", "banks", "tlbs", "exits", "trace", "set_cpl", "cr2"):
        with pytest.raises(AttributeError):
            getattr(cpu, name)
    with pytest.raises(AttributeError):
        cpu.ram = None  # type: ignore[attr-defined]


def test_the_catalogue_and_the_demo_run_on_the_surface_alone() -> None:
    """With no fallback left, every scenario on every preset and the demo run to a verdict: a
    guest routine that reached past the surface would have raised (and escaped the model)."""
    from rich.console import Console

    from vbsim import demo

    for scenario in SCENARIOS:
        for name in PRESET_ORDER:
            result, _ = run(scenario, name)
            assert result.outcome is not None
    assert demo.run(Console(file=io.StringIO(), width=120)) == 0
