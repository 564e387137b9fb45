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

import collections
import functools
import importlib
import io
import mmap
import pkgutil
import textwrap
import types
from collections import Counter
from collections.abc import Generator, Iterator
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


def test_every_recorded_violation_has_a_reason() -> None:
    """Debt is written down with why it is there: each recorded violation has a reason, and no
    reason outlives its violation."""
    recorded = {(f, k) for f, keys in DEBT["violations"].items() for k in keys}
    reasons = {(f, k) for f, keys in DEBT["reasons"].items() for k, why in keys.items() if why}
    assert recorded - reasons == set(), "recorded without a reason"
    assert reasons - recorded == set(), "a reason for a violation no longer recorded"


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
        # names not in the source: computed attribute names, run-time imports, sys.modules
        ("getattr(cpu, '__' + 'vp__')", "introspection"),
        ("setattr(cpu, ''.join(['r', 'ax']), 0)", "introspection"),
        ("delattr(cpu, str(cpu.rax))", "introspection"),
        ("__import__('vbsim.machine')", "introspection"),
        ("import importlib", "import"),
        ("from importlib import import_module", "import"),
        ("import builtins", "import"),
        ("import sys; sys.modules['vbsim.hw.vp']", "introspection"),
        ("import operator; operator.attrgetter('__vp__')(cpu)", "introspection"),
        ("import operator; operator.attrgetter(str(cpu.rax))(cpu)", "introspection"),
        # a name re-exported by a module guest code may import is judged where it is defined
        ("from vbsim.hw.pagetable import GuestRam", "import"),
        ("from vbsim.guest.address_space import KernelSpace", "import"),
        # the host's files: the model PKI's private keys are files in the data directory
        ("open('/root/.local/share/vbsim/pki/root.key', 'rb').read()", "host-call"),
        ("import pathlib; pathlib.Path('root.key').read_bytes()", "import"),
        ("import os; os.open('root.key', 0)", "import"),
        ("exec('import vbsim.machine')", "host-call"),
    ],
)
def test_planted_violations_of_each_kind_are_caught(line: str, rule: str) -> None:
    source = _planted(CATALOGUE_A1.read_text(), "_tamper", line)
    found = checker.check_source(source, "vbsim.attacks.catalogue.a01_a04_vtl1_boundary")
    assert any(v.function == "_tamper" and v.rule == rule for v in found), found


#: Another module's code and tables reached from a step (helper-34's audit found each one
#: changing a verdict): SK decision tables, an SK service's function, the code registry.
_STATE_PLANTS = {
    "table": "from vbsim.sk import hyperguard; hyperguard.TRUSTED[0] = 0",
    "function": "from vbsim.sk.services import ium as sk_ium; sk_ium.admit = len",
    "alias": "from vbsim.sk import hyperguard; t = hyperguard.TRUSTED; t[0] = 0",
    "augmented": "from vbsim.sk import hyperguard; hyperguard.CR0_MASK += 1",
    "delete": "from vbsim.sk import hyperguard; del hyperguard.TRUSTED[0]",
    "mutator": "from vbsim.sk.ium import syscalls; syscalls.IUM_FILTER.update({})",
    "imported-name": "from vbsim.sk.hyperguard import TRUSTED; TRUSTED.clear()",
    "setattr": "from vbsim.sk.services import ium as sk_ium; setattr(sk_ium, 'admit', len)",
    "dunder": "from vbsim.sk.services import ium as sk_ium; sk_ium.__setattr__('admit', len)",
}


@pytest.mark.parametrize("line", _STATE_PLANTS.values(), ids=_STATE_PLANTS.keys())
def test_a_step_changing_another_modules_state_is_caught(line: str) -> None:
    source = _planted(CATALOGUE_A1.read_text(), "_tamper", line)
    found = checker.check_source(source, "vbsim.attacks.catalogue.a01_a04_vtl1_boundary")
    rules = {v.rule for v in found if v.function == "_tamper"}
    assert rules & {"module-state", "introspection"}, found


#: Routes to another component's object that no import names (a second audit forged A4, A8,
#: D9 and A27 with them): the store itself is what the step-state rule refuses.
_STEP_STATE_PLANTS = {
    "tuple-subscript": "from vbsim.sk.layouts import Config; (Config,)[0].LEGACY_UNCHECKED = 0",
    "call-result": "from vbsim.sk import hyperguard; (lambda: hyperguard)().TRUSTED = {}",
    "setattr-on-call": "from vbsim.sk.layouts import Config; setattr((lambda: Config)(), 'X', 0)",
    "default-argument": "from vbsim.sk.layouts import Config\n"
    "    def g(c=Config):\n        c.LEGACY_UNCHECKED = 0\n    g()",
    "parameter": "from vbsim.nt import dump\n    def g(m):\n        m.files = dict\n    g(dump)",
    "kernel-symbols": "cpu.kernel().variables['guard_icall_bitmap'] = 0",
    "kernel-alias": "nt = cpu.kernel(); nt.variables.update({})",
    "in-place-alias": "v = cpu.kernel().variables; v |= {}",
    "operator": "import operator; operator.setitem(cpu.kernel().variables, 'x', 0)",
    "comprehension": "[setattr(c, 'X', 0) for c in (cpu.kernel(),)]",
}


@pytest.mark.parametrize("line", _STEP_STATE_PLANTS.values(), ids=_STEP_STATE_PLANTS.keys())
def test_a_step_changing_any_object_it_did_not_build_is_caught(line: str) -> None:
    source = _planted(CATALOGUE_A1.read_text(), "_tamper", line)
    found = checker.check_source(source, "vbsim.attacks.catalogue.a01_a04_vtl1_boundary")
    assert any(v.function == "_tamper" and v.rule == "step-state" for v in found), found


def test_a_step_may_change_its_own_containers_and_registers() -> None:
    source = textwrap.dedent(
        """
        from vbsim.hw.cpu import Cpu

        def step(cpu: Cpu) -> list[int]:
            out: list[int] = []
            buffer = bytearray(8)
            table = {}
            out.append(cpu.read_u64(0))
            buffer[0] = 1
            table[1] = 2
            count = 0
            count += 1
            cpu.rax = count
            cpu.xmm[10] = 0
            return out
        """
    )
    found = checker.check_source(source, "vbsim.attacks.catalogue.planted")
    assert found == []


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("from vbsim.hw import code; code._registry.pop(b'')", "module-private"),
        ("from vbsim.hw import code; code._breakpoints[b''] = ('x', len)", "module-private"),
        ("from vbsim.hw import code; code.register('sk.svc.NULL', len)", "registration"),
        ("from vbsim.hw.code import guest_code; guest_code('sk.svc.NULL')(len)", "registration"),
        ("cpu.kernel().register_service('KiSystemCall64', 0, len)", "registration"),
        ("from vbsim.hw import code; code.linking()", "registration"),
        # a catalogue helper that hands out a host secret (the logon's OWF) is host side
        (
            "from vbsim.attacks.catalogue.a21_a29_credentials import _owf; cpu.write(0, _owf())",
            "host-call",
        ),
    ],
)
def test_a_step_rewriting_the_instruction_set_is_caught(line: str, rule: str) -> None:
    """What a thunk in RAM runs is fixed when the routine is linked (host side, at import): a
    step that re-registered an SK routine's name would run its own function at VTL1."""
    source = _planted(CATALOGUE_A1.read_text(), "_tamper", line)
    found = checker.check_source(source, "vbsim.attacks.catalogue.a01_a04_vtl1_boundary")
    assert any(v.function == "_tamper" and v.rule == rule for v in found), found


def test_calling_an_imported_modules_functions_is_not_a_state_change() -> None:
    """``objdir.insert(...)`` calls a function of the module (it changes RAM through the CPU);
    reading another module's table is fine too."""
    source = textwrap.dedent(
        """
        from vbsim.hw.cpu import Cpu
        from vbsim.nt import objdir, vad
        from vbsim.sk.hyperguard import TRUSTED

        def service(cpu: Cpu) -> int:
            objdir.insert(cpu, 0, 0, 0)
            vad.remove(cpu, 0, 0)
            return TRUSTED.get(0, 0)
        """
    )
    found = checker.check_source(source, "vbsim.attacks.catalogue.planted")
    assert [v for v in found if v.rule in {"module-state", "module-private"}] == []


#: Module-level containers a guest module may keep, each with why: none is a value a kernel
#: decides from.
_MUTABLE_GLOBALS = {
    # memo of the code object built once per system-service handler (the routine, not data)
    ("vbsim.nt.kernel", "_SERVICE_ROUTINES"),
    # the same for normal-call handlers
    ("vbsim.nt.vsl", "_NORMAL_CALL_ROUTINES"),
    # a debugger's hit counters on driver bodies: host-side observation no guest code reads
    ("vbsim.nt.drivers", "RUNS"),
}


def _guest_modules() -> list[types.ModuleType]:
    found = []
    for package in checker.GUEST_PACKAGES:
        root = importlib.import_module(package)
        found.append(root)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            found.append(importlib.import_module(info.name))
    return found


def test_guest_modules_tables_cannot_be_changed_at_run_time() -> None:
    """A kernel's code constants (HyperGuard's masks, the IUM filter's template, dispatch and
    number tables) are read-only at run time: an alias the static check cannot follow
    (``t = hyperguard.TRUSTED``) still cannot change what VTL1 decides from."""
    mutable = sorted(
        (module.__name__, name, type(value).__name__)
        for module in _guest_modules()
        for name, value in vars(module).items()
        if not name.startswith("__")
        and isinstance(value, dict | list | set | bytearray | collections.deque)
        and (module.__name__, name) not in _MUTABLE_GLOBALS
    )
    assert mutable == []
    from vbsim.sk import hyperguard

    with pytest.raises(TypeError):
        hyperguard.TRUSTED[0] = 0  # type: ignore[index]


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


#: A planted module of the tree that re-exports host names (``from vbsim.hw.ram import ...``):
#: importing them from it is importing them from ``vbsim.hw.ram``.
_REEXPORTER = {
    "vbsim.guest.planted_util": textwrap.dedent(
        """
        from vbsim.hw.ram import FrameAllocator as Frames
        from vbsim.hw.vp import VirtualProcessor as Processor
        from vbsim.hw.x86 import PAGE_SIZE
        """
    ),
    "vbsim.guest.planted_again": "from vbsim.guest.planted_util import Frames as Pool\n",
}


@pytest.mark.parametrize(
    "source",
    [
        "from vbsim.guest.planted_util import Frames\n",
        "from vbsim.guest.planted_util import Processor as P\n",
        "from vbsim.guest.planted_again import Pool\n",
        "from vbsim.guest import planted_util\n\ndef f() -> object:\n"
        "    return planted_util.Frames\n",
        "import vbsim.guest.planted_util as u\n\ndef f() -> object:\n    return u.Processor\n",
        "import vbsim.guest.planted_util\n\ndef f() -> object:\n"
        "    return vbsim.guest.planted_util.Frames\n",
        "def f() -> object:\n    from vbsim.guest.planted_again import Pool\n\n    return Pool\n",
        # before the split, vbsim.guest.address_space imported these itself
        "from vbsim.guest.address_space import GuestRam, VirtualProcessor\n",
    ],
)
def test_a_reexported_host_name_is_caught(source: str) -> None:
    found = checker.check_source(source, "vbsim.nt.planted", modules=_REEXPORTER)
    assert found and {v.rule for v in found} == {"import"}, found
    assert any("vbsim.hw." in v.detail or "host-side type" in v.detail for v in found), found


def test_a_reexported_abi_name_is_not_a_violation() -> None:
    source = "from vbsim.guest.planted_util import PAGE_SIZE\n"
    assert checker.check_source(source, "vbsim.nt.planted", modules=_REEXPORTER) == []


def test_a_step_using_a_reexported_host_name_is_caught() -> None:
    source = textwrap.dedent(
        """
        from vbsim.attacks.context import AttackContext
        from vbsim.guest.planted_util import Frames
        from vbsim.hw.cpu import Cpu

        def _pay(cpu: Cpu) -> object:
            return Frames

        def steps(ctx: AttackContext) -> None:
            ctx.kernel(_pay)
        """
    )
    found = checker.check_source(source, "vbsim.attacks.catalogue.planted", modules=_REEXPORTER)
    assert [(v.function, v.rule) for v in found] == [("_pay", "import")], found
    assert "re-exported" in found[0].detail


def test_guest_code_may_import_all_of_the_address_space_layout() -> None:
    """``vbsim.guest.address_space`` is the guest-safe half of the layout (the loader's
    ``KernelSpace`` is ``vbsim.boot.kernel_space``): all it defines or imports is fine for guest
    code, and it imports nothing of the platform."""
    import vbsim.guest.address_space as layout

    names = sorted(n for n in vars(layout) if not n.startswith("_") and n != "annotations")
    source = f"from vbsim.guest.address_space import {', '.join(names)}\n"
    assert checker.check_source(source, "vbsim.nt.planted") == []
    assert {"DIRECT_MAP", "KernelMap", "runtime_phys", "interrupt_gate"} <= set(names)
    assert "KernelSpace" not in names


def _catalogue(body: str) -> list[checker.Violation]:
    source = textwrap.dedent(
        """
        from vbsim.attacks.context import AttackContext
        from vbsim.hw.cpu import Cpu
        from vbsim.hw.ram import GuestRam

        def _pay(cpu: Cpu, value: object = None) -> object:
            return value

        def steps(ctx: AttackContext) -> None:
        """
    ) + textwrap.indent(textwrap.dedent(body), "    ")
    return checker.check_source(source, "vbsim.attacks.catalogue.planted")


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        # a payload closing over a host variable bound to the platform
        ("ram = ctx.booted.machine.ram\nctx.kernel(lambda cpu: ram.read(0x1000, 8))", "closure"),
        ("m = ctx.booted.machine\nr = m.ram\nctx.kernel(lambda cpu: r.read(0, 8))", "closure"),
        ("vp = ctx.booted.machine.bsp\nctx.kernel(lambda cpu: vp.cpu.rax)", "closure"),
        ("c = ctx\nctx.kernel(lambda cpu: c.notes)", "closure"),
        ("ctx.kernel(lambda cpu: ctx.notes)", "closure"),
        ("mem: GuestRam = ctx.notes['m']\nctx.kernel(lambda cpu: mem.read(0, 8))", "closure"),
        ("for vp in ctx.booted.machine.vps:\n    ctx.kernel(lambda cpu: vp.index)", "closure"),
        # a nested step (first parameter a Cpu), a default argument, a nested def by name
        (
            "ram = ctx.booted.machine.ram\n\ndef inner(cpu: Cpu) -> bytes:\n"
            "    return ram.read(0, 8)\n\nctx.kernel(inner)",
            "closure",
        ),
        (
            "ram = ctx.booted.machine.ram\n\ndef inner(cpu: Cpu, m: object = ram) -> object:\n"
            "    return m\n\nctx.kernel(inner)",
            "closure",
        ),
        (
            "ram = ctx.booted.machine.ram\n\ndef inner(cpu):\n    return ram\n\nctx.user(inner)",
            "closure",
        ),
        # a platform object handed to the payload as an argument
        ("ctx.kernel(_pay, ctx.booted.machine.ram)", "argument"),
        ("ram = ctx.booted.machine.ram\nctx.secure_kernel(_pay, ram)", "argument"),
        ("ctx.user(_pay, ctx)", "argument"),
    ],
)
def test_a_payload_holding_a_host_object_is_caught(body: str, rule: str) -> None:
    found = _catalogue(body)
    assert any(v.rule == rule for v in found), found


@pytest.mark.parametrize(
    "body",
    [
        "va = ctx.notes['va']\nctx.kernel(lambda cpu: cpu.read(va, 8))",
        "ram = ctx.booted.machine.ram\ndata = ram.read(0, 8)\nctx.kernel(_pay, data)",
        "ctx.kernel(_pay, 1, 'x', b'y', None, (1, 2), [3])",
        "ram = ctx.booted.machine.ram\nctx.kernel(lambda cpu, ram=0: cpu.read(ram, 8))",
    ],
)
def test_a_payload_holding_plain_values_is_not_a_violation(body: str) -> None:
    assert _catalogue(body) == []


def test_a_payload_reports_by_returning_not_by_changing_host_state() -> None:
    """A payload that appends to a host-side list changes an object it did not build: what it
    found comes back as its return value (step-state)."""
    found = _catalogue("got: list[int] = []\nctx.kernel(lambda cpu: got.append(cpu.rax))")
    assert [v.rule for v in found] == ["step-state"]


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


#: Generator-like objects and the attribute of their suspended frame.
_FRAMES = {types.GeneratorType: "gi_frame", types.CoroutineType: "cr_frame"}
_FRAMES[types.AsyncGeneratorType] = "ag_frame"


#: vbsim.hw.code's routine tables: the process's registry, which also holds what other tests
#: registered from their own rigs.  The walk takes the model's routines from them as roots
#: (``_roots``) and does not follow the tables again through the module.
_CODE_TABLES = ("_registry", "_breakpoints", "_arity", "_uses")


def _registered_routines() -> set[int]:
    """The ids of every function registered as guest code (``vbsim.hw.code``): whose globals the
    walker follows (the names their code references), as the code of the image."""
    from vbsim.hw import code

    tables = (getattr(code, "_registry", {}), getattr(code, "_breakpoints", {}))
    return {id(routine) for table in tables for _, routine in table.values()}


def _referenced_names(function_code: types.CodeType) -> set[str]:
    """The global names a function's code (and the code nested in it) references."""
    names = set(function_code.co_names)
    for constant in function_code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _referenced_names(constant)
    return names


def _walked_module(module: types.ModuleType) -> bool:
    """A module whose globals the walker follows: the model's own and planted ones (no file),
    not the standard library's or a third party's."""
    name = module.__name__
    return name == "vbsim" or name.startswith("vbsim.") or getattr(module, "__file__", None) is None


def _function_children(
    value: types.FunctionType, routines: frozenset[int] | set[int]
) -> Iterator[tuple[str, Any]]:
    for index, cell in enumerate(value.__closure__ or ()):
        try:
            yield f".<cell {index}>", cell.cell_contents
        except ValueError:
            continue
    for index, default in enumerate(value.__defaults__ or ()):
        yield f".__defaults__[{index}]", default
    for key, default in (value.__kwdefaults__ or {}).items():
        yield f".__kwdefaults__[{key!r}]", default
    yield from ((f".{k}", v) for k, v in value.__dict__.items())
    if id(value) in routines:  # guest code: what it can name is part of what it holds
        scope = value.__globals__
        for name in sorted(_referenced_names(value.__code__)):
            if name in scope:
                yield f".__globals__[{name!r}]", scope[name]


def _children(
    value: Any, routines: frozenset[int] | set[int] = frozenset()
) -> Iterator[tuple[str, Any]]:
    """What an object refers to, without gc: attributes, slots, class attributes, container
    items, the self of a bound method, the cells and defaults of a function (and, for a routine
    registered as guest code, the globals its code names), a partial's function and arguments,
    a module's globals, and the locals of a suspended generator or coroutine (the Secure Kernel
    keeps suspended flows in ``sk.pending``): a Python kernel could hide a reference in any."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"[{key!r}]", item
            if not isinstance(key, str | int):
                yield f"<key {key!r}>", key
        return
    if isinstance(value, list | tuple | set | frozenset | collections.deque):
        for index, item in enumerate(value):
            yield f"[{index}]", item
        return
    if isinstance(value, functools.partial):
        yield ".func", value.func
        for index, argument in enumerate(value.args):
            yield f".args[{index}]", argument
        for key, argument in value.keywords.items():
            yield f".keywords[{key!r}]", argument
        return
    if isinstance(value, types.MethodType):
        yield ".__self__", value.__self__
        yield ".__func__", value.__func__
        return
    if isinstance(value, types.FunctionType):
        yield from _function_children(value, routines)
        return
    if isinstance(value, types.BuiltinFunctionType | types.MethodWrapperType):
        owner = getattr(value, "__self__", None)  # list.append bound to a list ...
        if owner is not None and not isinstance(owner, types.ModuleType):
            yield ".__self__", owner
        return
    frame_attribute = _FRAMES.get(type(value))
    if frame_attribute is not None:
        frame = getattr(value, frame_attribute)
        if frame is not None:
            yield from ((f".<frame>.{k}", v) for k, v in frame.f_locals.items())
        delegate = getattr(value, "gi_yieldfrom", None) or getattr(value, "cr_await", None)
        if delegate is not None:
            yield ".<yield from>", delegate
        return
    if isinstance(value, types.ModuleType):
        if _walked_module(value):
            skip = _CODE_TABLES if value.__name__ == "vbsim.hw.code" else ()
            for name, item in vars(value).items():
                if not (name.startswith("__") and name.endswith("__")) and name not in skip:
                    yield f".{name}", item
        return
    if isinstance(value, staticmethod | classmethod):
        yield ".__func__", value.__func__
        return
    if isinstance(value, property):
        for accessor in ("fget", "fset", "fdel"):
            yield f".{accessor}", getattr(value, accessor)
        return
    if isinstance(value, type):
        if value.__module__ == "builtins":
            return
        for name, item in vars(value).items():  # class attributes (bases are children too)
            if not (name.startswith("__") and name.endswith("__")):
                yield f".{name}", item
        for index, base in enumerate(value.__bases__):
            yield f".__bases__[{index}]", base
        return
    yield ".__class__", type(value)
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict):
        yield from ((f".{k}", v) for k, v in attributes.items())
    for klass in type(value).__mro__:
        for slot in getattr(klass, "__slots__", ()):
            if isinstance(slot, str) and hasattr(value, slot):
                yield f".{slot}", getattr(value, slot)


_ATOMS = (
    int,
    float,
    str,
    bytes,
    bool,
    type(None),
    bytearray,
    complex,
    range,
    types.CodeType,
    types.GetSetDescriptorType,
    types.MemberDescriptorType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
)


def platform_references(root: object, label: str, depth: int = 8) -> list[str]:
    """Paths from ``root`` to platform objects, breadth first, each object visited once."""
    found: list[str] = []
    seen: set[int] = {id(root)}
    frontier: list[tuple[str, Any]] = [(label, root)]
    routines = _registered_routines()
    for _ in range(depth):
        following: list[tuple[str, Any]] = []
        for path, value in frontier:
            for step, child in _children(value, routines):
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
    for label, root in _roots(machine):
        found += platform_references(root, label)
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
        for label, root in _roots(machine):
            found.update(_unplaced(ref) for ref in platform_references(root, label))
    return tuple(sorted(found))


def _roots(machine: Machine) -> Iterator[tuple[str, object]]:
    """What guest code holds, to walk: every image behind a GS base, and every routine of the
    model registered as guest code (its closure, defaults and the globals its code names).  The
    registry is the process's: routines other tests register from their own rigs
    (``tests/hw/rig.py`` keeps the rig it drives in a class attribute) are host-side harness,
    not the model's guest code, and are left out."""
    for (vtl, block), image in sorted(machine.ram.images.items(), key=lambda item: item[0]):
        yield f"VTL{vtl}@{block:#x}:{type(image).__name__}", image
    from vbsim.hw import code

    tables = (getattr(code, "_registry", {}), getattr(code, "_breakpoints", {}))
    yield (
        "routines",
        {
            name: routine
            for table in tables
            for name, routine in table.values()
            if str(getattr(routine, "__module__", "")).startswith("vbsim.")
        },
    )


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


@types.coroutine
def _pause() -> Iterator[None]:
    yield None


def _holders(ram: GuestRam) -> Iterator[tuple[str, object, str]]:
    """(what, an object that holds ``ram`` that way, the path the walker must report)."""

    class Holder:
        def __init__(self, value: object) -> None:
            self.value = value

    yield "partial args", Holder(functools.partial(print, ram)), "k.value.args[0]"
    yield "partial keywords", Holder(functools.partial(print, file=ram)), "k.value.keywords['file']"

    class WithClassAttribute:
        leak = ram

    yield "class attribute", WithClassAttribute(), "k.__class__.leak"

    def with_default(cpu: Cpu, mem: object = ram) -> object:
        return mem

    yield "default argument", Holder(with_default), "k.value.__defaults__[0]"

    def with_kwdefault(cpu: Cpu, *, mem: object = ram) -> object:
        return mem

    yield "keyword default", Holder(with_kwdefault), "k.value.__kwdefaults__['mem']"

    def flow() -> Generator[int, None, None]:
        mem = ram
        yield 0
        del mem

    generator = flow()
    next(generator)
    yield "suspended generator", Holder([generator]), "k.value[0].<frame>.mem"

    async def secure_call() -> None:
        mem = ram
        await _pause()
        del mem

    coroutine = secure_call()
    coroutine.send(None)
    yield "suspended coroutine", Holder(coroutine), "k.value.<frame>.mem"
    coroutine.close()

    module = types.ModuleType("planted_module")
    module.platform = ram  # type: ignore[attr-defined]
    yield "module object", Holder(module), "k.value.platform"
    yield "bound builtin method", Holder([ram].append), "k.value.__self__[0]"


def test_the_walker_finds_references_of_each_kind() -> None:
    """Each way a Python object can hold another that the first walker missed (a partial, a
    class attribute, a default, a suspended generator or coroutine, a module)."""
    ram = GuestRam(1 << 20)
    try:
        for what, holder, path in _holders(ram):
            assert platform_references(holder, "k") == [f"{path}: GuestRam"], what
    finally:
        ram.close()


def test_the_walker_follows_the_globals_of_registered_guest_code() -> None:
    """A routine registered as guest code holds what its code names in its module's globals
    (only those names: a function not registered, or a global it does not name, is not
    walked)."""
    from vbsim.hw import code

    ram = GuestRam(1 << 20)
    scope: dict[str, Any] = {"LEAK": ram, "UNUSED": ram}
    exec("def routine(cpu):\n    return LEAK\n", scope)
    routine = scope["routine"]
    assert platform_references({"r": routine}, "k") == []  # not registered: not guest code
    thunk = code.register("test.architecture.planted_routine", routine)
    try:
        assert platform_references({"r": routine}, "k") == ["k['r'].__globals__['LEAK']: GuestRam"]
    finally:
        for table in (getattr(code, "_registry", {}), getattr(code, "_breakpoints", {})):
            table.pop(thunk, None)
        ram.close()


def test_the_walker_sees_a_suspended_secure_kernel_flow() -> None:
    """The Secure Kernel keeps suspended flows (a secure call waiting for a normal call's
    answer) in ``sk.pending``: a flow whose frame held the machine's RAM would be found."""
    ctx = _booted("vbs")
    machine, sk = ctx.booted.machine, ctx.booted.sk
    assert machine is not None and sk is not None

    def flow() -> Generator[int, None, None]:
        mem = machine.ram
        yield 0
        del mem

    generator = flow()
    next(generator)
    sk.pending.setdefault(99, []).append(generator)  # type: ignore[arg-type]
    try:
        found = [ref for label, root in _roots(machine) for ref in platform_references(root, label)]
        assert any(ref.endswith(".pending[99][0].<frame>.mem: GuestRam") for ref in found), found
    finally:
        sk.pending[99].remove(generator)  # type: ignore[arg-type]
        generator.close()


def test_a_mode_entry_refuses_a_platform_object_for_its_payload() -> None:
    """``ctx.kernel(f, ctx.booted.machine.ram)`` would hand guest code the machine's RAM: each
    mode entry takes plain values only, and a payload that closes over a host object (or binds
    one in a default or a partial) is refused too, before it runs."""
    ctx = _booted("vbs")
    machine = ctx.booted.machine
    assert machine is not None
    ran: list[int] = []

    def payload(cpu: Cpu, *args: object, **kwargs: object) -> None:
        ran.append(cpu.cpl)

    ram = machine.ram

    def closes_over_ram(cpu: Cpu) -> None:
        ran.append(ram.size)

    def defaults_to_the_machine(cpu: Cpu, where: object = machine) -> None:
        ran.append(1)

    for entry in (ctx.kernel, ctx.user, ctx.secure_kernel):
        for bad in (ram, machine, machine.bsp, ctx, ctx.booted, ctx.policy, (1, [ram])):
            with pytest.raises(TypeError, match="handed to guest code is a"):
                entry(payload, 1, bad)
        for holder in (
            closes_over_ram,
            defaults_to_the_machine,
            functools.partial(payload, ram),  # type: ignore[arg-type]
            functools.partial(payload, where=machine.bsp),
        ):
            with pytest.raises(TypeError, match="guest code holds only its Cpu"):
                entry(holder)
    assert ran == []
    ctx.kernel(payload, 1, b"x", "y", None, True, (1, 2), [3, (4, b"5")])
    assert ran == [0]


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
