"""DESIGN.md's one rule, checked statically: guest code holds only an architectural CPU.

Guest code is software that runs *on* the machine (DESIGN.md "Three kinds of code"):

- every module under ``vbsim.nt``, ``vbsim.sk`` and ``vbsim.ium``, as a whole;
- the **steps** of the attack catalogue (``vbsim.attacks.catalogue``) and the guest routines of
  ``vbsim.guest`` (``bare``, ``hvcall``).  Those packages mix guest code with host-side code (the
  scenario's orchestration, ``before_boot`` changes to the disk, goal checks, loaders), so a
  *step* is defined by what runs on a processor:

  1. a function whose first parameter is annotated ``Cpu`` (the processor the routine runs on:
     ``vp.call`` / ``VirtualProcessor.user_call`` hand every routine its ``Cpu`` first);
  2. a function decorated with ``@guest_code(...)`` (registered as code in RAM);
  3. a function or lambda handed to a mode entry as the code to run there —
     ``ctx.kernel(f, ...)``, ``ctx.user(f, ...)``, ``ctx.secure_kernel(f, ...)``,
     ``payload_routine(f)``, ``code.register(name, f)``;
  4. a function nested in a step (it is part of the step's code).

  Everything else in those modules is host-side: it receives the ``AttackContext`` or the
  ``Machine`` and may read RAM (a goal check is a hardware debugger's view).  A step that calls a
  host-side function (one taking the ``AttackContext``, the ``Machine`` ...: :data:`HOST_TYPES`)
  is itself a violation (it would reach the host through it); pure helpers (encoders, image
  builders) are neither.

What guest code may not do (each a :class:`Violation` with its file, line and function):

- import the platform or the host: ``vbsim.machine``, ``vbsim.hv`` (but ``hv.defs`` and
  ``hv.abi``, the TLFS numbers and the hypercall input encoding, and ``hv.calls.context``, the
  HV_INITIAL_VP_CONTEXT layout), ``vbsim.hw`` but the pure modules in :data:`PURE_HW`,
  ``vbsim.boot``, ``vbsim.invariants``, ``vbsim.attacks`` (in a step: anything but the
  catalogue's own steps), ``vbsim.policy``, ``vbsim.trace``, the tools (``report``, ``cli``,
  ``bench``, ``fuzz``, ``demo``, ``scenarios``), and the introspection modules ``gc``,
  ``inspect``, ``ctypes``.  In a mixed module the check applies to the *names* a step uses:
  a module-level ``from vbsim.hw.ram import GuestRam`` used only by a goal is fine, ``GuestRam``
  named inside a step is not.
- touch the platform's objects by attribute: :data:`FORBIDDEN_ATTRIBUTES` (``.ram``, ``.slat``,
  ``.banks``, ``.p``, ``.hv``, ``.machine``, ``.vps``, ``.frames``, ``switch_vtl`` ...), on any
  object — no guest object legitimately has them, and a Python kernel object that had one would
  be the leak the runtime check looks for;
- use a ``_``-prefixed attribute (dunders included) of a parameter typed ``Cpu``: the processor
  sits in its ``__vp__`` slot;
- introspect: :data:`FORBIDDEN_DUNDERS` (``__self__`` of a bound method is the VP), frame
  objects, ``vars()``/``globals()``, and ``getattr``/``setattr`` with a forbidden constant name;
- name ``VirtualProcessor`` (a guest routine's processor is a ``Cpu``);
- reach another kernel's internals: NT code may not import ``vbsim.sk`` nor the SK ``vbsim.nt``,
  and ``vbsim.ium`` neither, except the ABI modules in :data:`ABI_MODULES` (numbers and layouts
  both sides apply);
- pick a host name up where it is re-exported: an imported name (``from m import N``, or
  ``m.N`` on an imported module) is followed through the modules that import it to the module
  that defines it (:func:`origins`), and the rules apply to every module on the way; a name in
  :data:`HOST_TYPES` is a violation wherever it comes from;
- change what another module holds (rule ``module-state``): store into, delete from, or call a
  mutating method (:data:`MUTATING_METHODS`) on an object reached from an imported name, or
  from a local name bound to one (``hyperguard.TRUSTED[r] = 0``, ``sk_ium.admit = f``,
  ``t = code; t.x = 1``), or hand one to ``setattr``/``delattr``: an imported module's
  functions, tables and constants are another component's code and data, which guest code
  reaches only through memory;
- in a step, change anything but its own locals, the processor's registers and (through the
  processor) memory (rule ``step-state``): a step is attacker code, and its effects are the
  instructions it executes.  No attribute store or delete (but ``cpu.rax = v`` and the other
  registers), no ``setattr``/``delattr``/``operator.setitem``, and subscript stores, mutating
  method calls and augmented assignments only on names the step bound to a container it built
  (a display, a comprehension, ``bytearray(...)``, ``list(...)``...).  Whatever route reaches
  another component's object — a tuple subscript, a call's result, a default argument, a
  parameter, a comprehension variable, ``cpu.kernel()`` — the store itself is refused;
- use a ``_``-prefixed attribute of an imported module or of anything reached from one
  (``code._registry``, rule ``module-private``): a module's private state is its own;
- in a step, register code (``register``, ``guest_code``, ``payload_routine``, rule
  ``registration``): linking a routine into the instruction set is host side, done once at
  import; a step that re-registered a kernel routine's name would change what bytes already in
  RAM mean;
- find names the source does not spell: ``getattr``/``setattr``/``delattr`` with a computed
  name, ``operator.attrgetter``/``methodcaller`` (their names are checked as attributes),
  ``__import__``, ``importlib``, ``builtins``, ``sys.modules``;
- in a step nested in host-side code, close over a host variable holding a host or platform
  object (rule ``closure``: a parameter or variable typed with :data:`HOST_TYPES`, another name
  for one, or an attribute chain through :data:`FORBIDDEN_ATTRIBUTES`, ``ram =
  ctx.booted.machine.ram``; a default argument counts, it is evaluated in the host scope); and
  host code may not hand such an object to a mode entry as a payload's argument (rule
  ``argument``: ``ctx.kernel(f, ctx.booted.machine.ram)``; ``AttackContext`` refuses anything
  but plain values at run time too).  What a chain from a host *tool* yields (``nt =
  ctx.booted.nt``, ``ctx.notes["va"]``) is not known statically and is not flagged.

Run it: ``PYTHONPATH=src python tests/architecture/checker.py`` prints every violation, per file.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vbsim.hw.regs import SHARED_GPRS

SRC = Path(__file__).resolve().parents[2] / "src"

#: Packages whose modules are guest code as a whole.
GUEST_PACKAGES = ("vbsim.nt", "vbsim.sk", "vbsim.ium")
#: Packages that mix guest steps with host-side code: only steps are checked.
MIXED_PACKAGES = ("vbsim.attacks.catalogue", "vbsim.guest")

#: Platform modules guest code may import: numbers, encodings and pure data structures that hold
#: no machine state.  ``cpu`` (the architectural CPU itself), ``x86`` (architectural constants:
#: PTE bits, MSR numbers, vectors), ``code`` (the thunk encoding of code in RAM and the routine
#: registry, i.e. the instruction set), ``faults`` (how a flow ends: bugcheck, thread exit),
#: ``pagetable`` (the 4-level entry format and a table editor over a ``PhysAccess`` the caller
#: builds from its own loads and stores).
PURE_HW = frozenset(
    {"vbsim.hw.cpu", "vbsim.hw.x86", "vbsim.hw.code", "vbsim.hw.faults", "vbsim.hw.pagetable"}
)
#: Hypervisor modules that are ABI: numbers (TLFS), the hypercall input encoding, the initial
#: VP context layout.
ABI_HV = frozenset({"vbsim.hv.defs", "vbsim.hv.abi", "vbsim.hv.calls.context"})
#: Device programming interfaces (a datasheet's register offsets and command values) a driver
#: may name, from modules that otherwise model the device itself.
DEVICE_INTERFACES = {
    # The MC146818 CMOS clock's ports and register indices (its data sheet's).
    "vbsim.hw.rtc": frozenset(
        {
            "INDEX_PORT",
            "DATA_PORT",
            "SECONDS",
            "MINUTES",
            "HOURS",
            "WEEKDAY",
            "DAY",
            "MONTH",
            "YEAR",
            "STATUS_A",
            "STATUS_B",
            "CENTURY",
        }
    ),
    "vbsim.hw.dma": frozenset(
        {
            "DEFAULT_BASE",
            "REG_ADDR_LO",
            "REG_ADDR_HI",
            "REG_LENGTH",
            "REG_DIRECTION",
            "REG_COMMAND",
            "REG_STATUS",
            "REG_DEVICE_ID",
            "REG_XFERRED",
            "DIR_TO_MEMORY",
            "DIR_FROM_MEMORY",
            "CMD_GO",
            "CMD_RESET",
            "STATUS_IDLE",
            "STATUS_DONE",
            "STATUS_BLOCKED",
            "STATUS_ERROR",
        }
    ),
}
#: Annotations that make a function host-side: a step calling it would reach the host.
HOST_TYPES = frozenset(
    {
        "AttackContext",
        "Machine",
        "System",
        "VirtualProcessor",
        "GuestRam",
        "Hypervisor",
        "Policy",
        "KernelSpace",
    }
)
#: Host-side packages and modules (prefixes) no guest code imports.
FORBIDDEN_MODULES = (
    "vbsim.machine",
    "vbsim.hv",
    "vbsim.hw",
    "vbsim.boot",
    "vbsim.invariants",
    "vbsim.attacks",
    "vbsim.policy",
    "vbsim.trace",
    "vbsim.report",
    "vbsim.cli",
    "vbsim.bench",
    "vbsim.fuzz",
    "vbsim.demo",
    "vbsim.scenarios",
    # the model's signing service: private keys, Signer, sign_image (host side only)
    "vbsim.signing",
    "gc",
    "inspect",
    "ctypes",
    "importlib",
    "builtins",
    # the host's files, processes and sockets: guest code has a disk only through its kernel
    # (the model's key files in the data directory are the host's, vbsim.signing's)
    "os",
    "io",
    "pathlib",
    "shutil",
    "tempfile",
    "subprocess",
    "socket",
    "mmap",
)
#: The VTL0/VTL1 ABI both kernels may import from the other side (numbers and layouts only):
#: secure-call numbers per build, SECURE_CALL_ARGS, and what lives at the package level.
ABI_MODULES = frozenset(
    {"vbsim.sk.sscn", "vbsim.sk.callargs", "vbsim.sk.layouts", "vbsim.nt.layouts"}
)
#: Which kernel may not import which (DESIGN.md: "neither kernel imports the other").
CROSS_KERNEL = {
    "vbsim.nt": ("vbsim.sk", "vbsim.ium"),
    "vbsim.sk": ("vbsim.nt", "vbsim.ium"),
    "vbsim.ium": ("vbsim.nt", "vbsim.sk"),
}

#: Attributes of the platform (VirtualProcessor, Machine, Hypervisor, GuestRam ...).
FORBIDDEN_ATTRIBUTES = frozenset(
    {
        "ram",
        "mm",
        "slat",
        "banks",
        "layers",
        "layer",
        "tlbs",
        "exits",
        "hv",
        "machine",
        "vps",
        "bsp",
        "frames",
        "p",
        "trace",
        "cr2",
        "iommu",
        "images",
        "loaded_kernel",
        "set_cpl",
        "_set_cpl",
        "host_entry",
        "switch_vtl",
        "enable_vtl",
        "set_mbec",
        "flush_tlb",
        "apply_msr",
        "apply_cr",
        "cpu_of",
        "_getframe",
        "f_back",
        "f_locals",
        "f_globals",
        "gi_frame",
        "cr_frame",
        "tb_frame",
    }
)
FORBIDDEN_DUNDERS = frozenset(
    {
        "__self__",
        "__closure__",
        "__dict__",
        "__globals__",
        "__code__",
        "__func__",
        "__wrapped__",
        "__getattribute__",
        "__getattr__",
        "__class__",
        "__subclasses__",
        "__mro__",
        "__bases__",
        "__reduce__",
        "__reduce_ex__",
        "__builtins__",
        "__slots__",
        "__vp__",
        "__setattr__",
        "__delattr__",
    }
)
FORBIDDEN_CALLS = frozenset({"vars", "globals", "locals"})
#: Builtins that reach the host's files or run host code: ``open`` (the data directory holds
#: the model PKI's private keys), ``exec``/``eval``/``compile`` (source the checker never sees).
HOST_CALLS = frozenset({"open", "exec", "eval", "compile", "breakpoint", "input"})
ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "setattr", "hasattr", "delattr"})
#: Attribute functions that return or change what they name: with a computed name, what they
#: reach is not in the source (``getattr(cpu, "__" + "vp__")``).
DYNAMIC_ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "setattr", "delattr"})
#: ``operator`` helpers that name attributes by string (their names are checked like getattr's).
ATTRIBUTE_GETTERS = frozenset({"attrgetter", "methodcaller"})
#: Names that import or find a module at run time, past any import statement the checker sees.
DYNAMIC_IMPORT_NAMES = frozenset({"__import__", "import_module", "__loader__", "__spec__"})
#: Mode entries whose first argument is code to run on the machine (rule 3 of a step).
PAYLOAD_CALLS = frozenset({"kernel", "user", "secure_kernel", "payload_routine", "register"})
#: Calls that link a routine into the instruction set (``vbsim.hw.code``): host side only.
REGISTRATION_CALLS = frozenset(
    {"register", "guest_code", "payload_routine", "register_service", "install_routine", "linking"}
)
#: Calls that build a fresh container a step owns (its own locals may be changed in place).
CONTAINER_CALLS = frozenset(
    {"bytearray", "list", "dict", "set", "array", "deque", "Counter", "defaultdict", "zip"}
)
#: Functions that change an object handed to them (``operator.setitem(d, k, v)``).
MUTATING_FUNCTIONS = frozenset(
    {"setattr", "delattr", "setitem", "delitem", "iadd", "iand", "ior", "ixor", "iconcat"}
)
#: Methods that change the container or object they are called on.
MUTATING_METHODS = frozenset(
    {
        "update",
        "pop",
        "popitem",
        "clear",
        "setdefault",
        "append",
        "extend",
        "remove",
        "add",
        "discard",
        "sort",
        "reverse",
        "difference_update",
        "intersection_update",
        "symmetric_difference_update",
        "__setitem__",
        "__delitem__",
        "__setattr__",
        "__delattr__",
    }
)
#: The mode entries of the attack context: what follows the payload is handed to guest code.
ENTRY_CALLS = frozenset({"kernel", "user", "secure_kernel"})


@dataclass(frozen=True, order=True)
class Violation:
    path: str
    line: int
    function: str
    rule: str
    detail: str

    def __str__(self) -> str:
        where = f" in {self.function}" if self.function else ""
        return f"{self.path}:{self.line}{where}: {self.rule}: {self.detail}"


def module_name(path: Path) -> str:
    relative = path.resolve().relative_to(SRC).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def forbidden_import(target: str, importer: str, step: bool) -> str | None:
    """Why ``importer`` (guest code) may not import ``target`` (a module, or a module's name);
    None if it may."""
    parent, _, name = target.rpartition(".")
    allowed = PURE_HW | ABI_HV | ABI_MODULES
    if target in allowed or parent in allowed or name in DEVICE_INTERFACES.get(parent, ()):
        return None
    if step and _within(target, "vbsim.attacks.catalogue"):
        return None  # other steps (their host-side functions are checked where called)
    for prefix in FORBIDDEN_MODULES:
        if _within(target, prefix):
            return f"imports {target} (host side or platform)"
    for kernel, others in CROSS_KERNEL.items():
        if _within(importer, kernel):
            for other in others:
                if _within(target, other) and target not in ABI_MODULES:
                    return f"imports {target} (another kernel's internals)"
    return None


#: Modules a planted-violation test adds to the tree (name → source), see :func:`check_source`.
_PLANTED: dict[str, str] = {}


def _source_of(module: str) -> Path | None:
    """The source file of ``module`` if it is one of the tree's modules (a package's
    ``__init__``), else None (a name defined in a module, or a module outside ``src``)."""
    if not module:
        return None
    if module in _PLANTED:
        return Path(f"<planted {module}>")
    base = SRC / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


_BINDINGS: dict[str, dict[str, str]] = {}


def _bindings(module: str) -> dict[str, str] | None:
    """The names ``module`` binds by import at its top level (``if TYPE_CHECKING:`` included):
    bound name → where it comes from; None if ``module`` is not a source module of the tree."""
    if module in _BINDINGS:
        return _BINDINGS[module]
    path = _source_of(module)
    if path is None:
        return None
    _BINDINGS[module] = {}  # an import cycle resolves to "defined here"
    _BINDINGS[module] = _parse(path, _PLANTED.get(module), module).imported
    return _BINDINGS[module]


def origins(target: str) -> list[str]:
    """``target`` (``module.name``) and, while the module it names got that name by import,
    where it got it from: the chain of re-exports down to the module that defines it.
    ``vbsim.guest.address_space.GuestRam`` (when that module imports it) → ``[...,
    vbsim.hw.ram.GuestRam]``."""
    chain = [target]
    while True:
        owner, _, name = chain[-1].rpartition(".")
        bound = _bindings(owner)
        if not bound or name not in bound or bound[name] in chain:
            return chain
        chain.append(bound[name])


def forbidden_origin(target: str, importer: str, step: bool) -> str | None:
    """:func:`forbidden_import` of ``target`` and of every module it is re-exported from: a name
    is judged where it is defined, not where it was picked up."""
    chain = origins(target)
    for hop in chain:
        why = forbidden_import(hop, importer, step)
        if why is not None:
            return why if hop == target else f"{why}, re-exported as {target}"
    name = chain[-1].rpartition(".")[2]
    if name in HOST_TYPES and _source_of(chain[-1]) is None:
        return f"imports {target} (a host-side type)"
    return None


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(node: ast.AST, importer: str, is_package: bool) -> Iterator[tuple[str, str, int]]:
    """(bound name, origin module or module.name, line) for each import below ``node``."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
            for alias in sub.names:
                bound = alias.asname or alias.name.split(".")[0]
                yield bound, alias.name, sub.lineno
        elif isinstance(sub, ast.ImportFrom):
            origin = _resolve(sub, importer, is_package)
            for alias in sub.names:
                yield alias.asname or alias.name, f"{origin}.{alias.name}", sub.lineno


def _annotation_name(annotation: ast.expr | None) -> str | None:
    if annotation is None:
        return None
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return annotation.value.split(".")[-1]
    if isinstance(annotation, ast.Name):
        return annotation.id
    if isinstance(annotation, ast.Attribute):
        return annotation.attr
    return None


Function = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


def _cpu_params(function: Function) -> set[str]:
    if isinstance(function, ast.Lambda):
        return set()
    args = function.args
    return {
        a.arg
        for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)
        if _annotation_name(a.annotation) == "Cpu"
    }


def _first_param_is_cpu(function: Function) -> bool:
    if isinstance(function, ast.Lambda):
        return False
    params = (*function.args.posonlyargs, *function.args.args)
    return bool(params) and _annotation_name(params[0].annotation) == "Cpu"


def _decorated_as_code(function: Function) -> bool:
    if isinstance(function, ast.Lambda):
        return False
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if _annotation_name(target) == "guest_code":
            return True
    return False


def _callee(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


@dataclass
class _Module:
    path: str
    name: str
    tree: ast.Module
    is_package: bool
    #: module-level imported names → origin
    imported: dict[str, str] = field(default_factory=dict)
    #: every name bound by an import anywhere in the module (function-level imports too) → origin
    all_imported: dict[str, str] = field(default_factory=dict)
    #: module-level function definitions by name
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)
    steps: list[tuple[str, Function]] = field(default_factory=list)
    #: per step (by id): the host-side functions it is nested in, outermost first
    enclosing: dict[int, list[Function]] = field(default_factory=dict)
    #: host objects handed to guest code as a payload's arguments (``ctx.kernel(f, ram)``)
    handed: list[Violation] = field(default_factory=list)


def _parse(path: Path, source: str | None = None, name: str | None = None) -> _Module:
    text = path.read_text() if source is None else source
    tree = ast.parse(text, filename=str(path))
    module = _Module(str(path), name or module_name(path), tree, path.name == "__init__.py")
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for bound, origin, _ in _imports(node, module.name, module.is_package):
                module.imported[bound] = origin
        elif isinstance(node, ast.If):  # if TYPE_CHECKING: imports
            for bound, origin, _ in _imports(node, module.name, module.is_package):
                module.imported.setdefault(bound, origin)
    for definition in tree.body:
        if isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef):
            module.functions[definition.name] = definition
    for bound, origin, _ in _imports(tree, module.name, module.is_package):
        module.all_imported.setdefault(bound, origin)
    module.all_imported.update(module.imported)
    return module


def _find_steps(module: _Module) -> list[tuple[str, Function]]:
    """Rules 1-3 of a step (rule 4, nesting, is the walk of each step's body).  Records, per
    step, the host-side functions it is nested in (``module.enclosing``): what it closes over."""
    found: dict[int, tuple[str, Function]] = {}

    def add(label: str, function: Function, scopes: list[Function]) -> None:
        if id(function) not in found:
            found[id(function)] = (label, function)
            module.enclosing[id(function)] = list(scopes)

    def local_def(name: str, scopes: list[Function]) -> Function | None:
        for scope in reversed(scopes):
            for node in _scope_nodes(scope):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
                    return node
        return None

    def visit(node: ast.AST, scope: str, scopes: list[Function]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                label = f"{scope}{child.name}"
                if _first_param_is_cpu(child) or _decorated_as_code(child):
                    add(label, child, scopes)
                    continue  # nested functions are part of the step
                visit(child, label + ".", [*scopes, child])
                continue
            if isinstance(child, ast.ClassDef):
                visit(child, f"{scope}{child.name}.", scopes)
                continue
            if isinstance(child, ast.Call) and _callee(child) in PAYLOAD_CALLS:
                callee = _callee(child)
                index = 1 if callee == "register" else 0
                if callee in ENTRY_CALLS and scopes:
                    module.handed.extend(_handed(module, scope, scopes, child, index))
                if len(child.args) > index:
                    payload = child.args[index]
                    if isinstance(payload, ast.Lambda):
                        add(f"{scope}<lambda line {payload.lineno}>", payload, scopes)
                    elif isinstance(payload, ast.Name):
                        nested = local_def(payload.id, scopes)
                        if nested is not None:  # a function defined in the host code
                            add(f"{scope}{payload.id}", nested, scopes)
                        elif payload.id in module.functions:
                            add(payload.id, module.functions[payload.id], [])
            visit(child, scope, scopes)

    visit(module.tree, "", [])
    return list(found.values())


def _handed(
    module: _Module, scope: str, scopes: list[Function], call: ast.Call, index: int
) -> Iterator[Violation]:
    """Host objects passed to a mode entry as the payload's arguments: ``ctx.kernel(f,
    ctx.booted.machine.ram)`` hands guest code the platform (the runtime check in
    ``AttackContext`` refuses anything but plain values, too)."""
    host: dict[str, str] = {}
    for enclosing in scopes:
        bound, found = _host_bindings(enclosing)
        host = {k: v for k, v in host.items() if k not in bound} | found
    label = scope.rstrip(".") or "<module>"
    for argument in call.args[index + 1 :]:  # keywords (admin=, process=) are the entry's
        why = _host_value(argument, host)
        if why is not None:
            yield Violation(
                module.path, argument.lineno, label, "argument", f"hands guest code {why}"
            )


def _scope_nodes(scope: Function) -> Iterator[ast.AST]:
    """The nodes of a function's own scope: its body, not the bodies of functions (or classes)
    defined in it (their names, defaults and decorators are evaluated in it, and yielded)."""
    stack: list[ast.AST] = (
        [scope.body] if isinstance(scope, ast.Lambda) else list(reversed(scope.body))
    )
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            stack.extend(reversed([*args.defaults, *(d for d in args.kw_defaults if d)]))
            if not isinstance(node, ast.Lambda):
                stack.extend(reversed(node.decorator_list))
            continue
        if isinstance(node, ast.ClassDef):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _bound_names(function: Function) -> set[str]:
    """Every name a function (and what is nested in it) binds: parameters, stores, imports,
    definitions, exception names.  What it uses and does not bind is free: the enclosing
    scope's."""
    names: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node is not function:
                names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update(a.asname or a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def _free_names(function: Function) -> dict[str, ast.Name]:
    """The names ``function`` reads from enclosing scopes (first use of each).  A default
    argument is evaluated in the enclosing scope, so what it names counts as free too."""
    bound = _bound_names(function)
    free: dict[str, ast.Name] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound:
            free.setdefault(node.id, node)
    args = function.args
    for default in (*args.defaults, *(d for d in args.kw_defaults if d)):
        for node in ast.walk(default):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                free.setdefault(node.id, node)
    return free


_PLATFORM_MARK = "reaches the platform"


def _host_value(value: ast.expr, host: dict[str, str]) -> str | None:
    """Why ``value`` (what a host-side name is bound to) is a host or platform object: an
    attribute chain through a forbidden attribute (``ctx.booted.machine.ram``), another name
    for a host object (``c = ctx``), or a chain rooted at a platform object (``m.pci`` after
    ``m = ctx.booted.machine``); None if nothing says so (a call's result, a number, and a chain
    from a host *tool* such as ``ctx.notes["va"]``, whose type the source does not say)."""
    node: ast.expr = value
    while True:
        if isinstance(node, ast.Attribute):
            if node.attr in FORBIDDEN_ATTRIBUTES:
                return f"{ast.unparse(value)} (.{node.attr} {_PLATFORM_MARK})"
            node = node.value
        elif isinstance(node, ast.Subscript | ast.Starred):
            node = node.value
        elif isinstance(node, ast.IfExp):
            return _host_value(node.body, host) or _host_value(node.orelse, host)
        elif isinstance(node, ast.Name):
            why = host.get(node.id)
            if why is None:
                return None
            if node is value:
                return why  # another name for the same object
            return f"{ast.unparse(value)} (from {why})" if _PLATFORM_MARK in why else None
        else:
            return None


def _targets(target: ast.expr, value: ast.expr | None) -> Iterator[tuple[str, ast.expr | None]]:
    """(name, the expression it is bound to) for an assignment target (tuples pairwise)."""
    if isinstance(target, ast.Name):
        yield target.id, value
    elif isinstance(target, ast.Tuple | ast.List):
        values = value.elts if isinstance(value, ast.Tuple | ast.List) else None
        if values is not None and len(values) == len(target.elts):
            for element, item in zip(target.elts, values, strict=True):
                yield from _targets(element, item)
        else:
            for element in target.elts:
                yield from _targets(element, value)
    elif isinstance(target, ast.Starred):
        yield from _targets(target.value, value)


def _host_bindings(scope: Function) -> tuple[set[str], dict[str, str]]:
    """(every name ``scope`` binds, those bound to host objects → why): a parameter or variable
    annotated with a :data:`HOST_TYPES` type, or bound to an attribute chain through the
    platform (``ram = ctx.booted.machine.ram``) or from another such name."""
    bound: set[str] = set()
    host: dict[str, str] = {}
    if not isinstance(scope, ast.Lambda):
        for a in (*scope.args.posonlyargs, *scope.args.args, *scope.args.kwonlyargs):
            bound.add(a.arg)
            kind = _annotation_name(a.annotation)
            if kind in HOST_TYPES:
                host[a.arg] = f"parameter typed {kind}"
    else:
        bound.update(a.arg for a in (*scope.args.posonlyargs, *scope.args.args))
    pairs: list[tuple[str, ast.expr | None, str | None]] = []
    for node in _scope_nodes(scope):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs.extend((n, v, None) for n, v in _targets(target, node.value))
        elif isinstance(node, ast.AnnAssign):
            kind = _annotation_name(node.annotation)
            pairs.extend((n, v, kind) for n, v in _targets(node.target, node.value))
        elif isinstance(node, ast.For | ast.AsyncFor):
            pairs.extend((n, v, None) for n, v in _targets(node.target, node.iter))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            pairs.extend((n, v, None) for n, v in _targets(node.optional_vars, node.context_expr))
        elif isinstance(node, ast.NamedExpr):
            pairs.extend((n, v, None) for n, v in _targets(node.target, node.value))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update(a.asname or a.name.split(".")[0] for a in node.names)
    bound.update(name for name, _, _ in pairs)
    changed = True
    while changed:
        changed = False
        for name, value, kind in pairs:
            if name in host:
                continue
            why = f"annotated {kind}" if kind in HOST_TYPES else None
            if why is None and value is not None:
                why = _host_value(value, host)
            if why is not None:
                host[name] = why
                changed = True
    return bound, host


def _closure_violations(module: _Module, label: str, step: Function) -> Iterator[Violation]:
    """A step nested in host-side code that reads a host-side variable holding a host or
    platform object (``ram = ctx.booted.machine.ram`` then ``lambda cpu: ram.read(...)``)."""
    scopes = module.enclosing.get(id(step), [])
    if not scopes:
        return
    analysed = [_host_bindings(scope) for scope in scopes]
    for name, use in sorted(_free_names(step).items()):
        for bound, host in reversed(analysed):
            if name in bound:
                if name in host:
                    yield Violation(
                        module.path,
                        use.lineno,
                        label,
                        "closure",
                        f"closes over {name}: {host[name]}",
                    )
                break


def _root(node: ast.expr) -> ast.Name | None:
    """The name an attribute/subscript chain starts from (``a`` of ``a.b[c].d``); None when
    the chain starts from a call's result or a literal (a new object, nobody else's)."""
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Starred):
        node = node.value
    return node if isinstance(node, ast.Name) else None


def _aliases(function: Function, imported: set[str]) -> set[str]:
    """Names ``function`` binds to an object reached from an imported name (``t = code``,
    ``table = hyperguard.TRUSTED``), to a fixed point."""
    pairs: list[tuple[str, ast.expr | None]] = []
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs.extend(_targets(target, node.value))
        elif isinstance(node, ast.AnnAssign | ast.NamedExpr):
            pairs.extend(_targets(node.target, node.value))
        elif isinstance(node, ast.For | ast.AsyncFor):
            pairs.extend(_targets(node.target, node.iter))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            pairs.extend(_targets(node.optional_vars, node.context_expr))
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, value in pairs:
            if name in found or value is None:
                continue
            root = _root(value)
            if root is not None and (root.id in imported or root.id in found):
                found.add(name)
                changed = True
    return found


def _builds_container(value: ast.expr | None) -> bool:
    """``value`` makes a new container: a display, a comprehension, a container constructor,
    or an operator over those (``[0] * n``, ``a + [x]``)."""
    if isinstance(
        value,
        ast.List | ast.Dict | ast.Set | ast.ListComp | ast.DictComp | ast.SetComp | ast.Tuple,
    ):
        return True
    if isinstance(value, ast.Call):
        return _callee(value) in CONTAINER_CALLS
    if isinstance(value, ast.BinOp):
        return _builds_container(value.left) or _builds_container(value.right)
    return False


def _owned(function: Function) -> set[str]:
    """Names ``function`` binds only to containers it built (every binding of the name is one):
    a step may change those in place."""
    built: dict[str, bool] = {}
    for node in ast.walk(function):
        pairs: list[tuple[str, ast.expr | None]] = []
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs.extend(_targets(target, node.value))
        elif isinstance(node, ast.AnnAssign | ast.NamedExpr):
            pairs.extend(_targets(node.target, node.value))
        elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
            pairs.extend((n, None) for n, _ in _targets(node.target, None))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            pairs.extend((n, None) for n, _ in _targets(node.optional_vars, None))
        for name, value in pairs:
            built[name] = built.get(name, True) and _builds_container(value)
    if not isinstance(function, ast.Lambda):
        for a in (*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs):
            built[a.arg] = False
    return {name for name, ok in built.items() if ok}


def _chain_bound(function: Function, cpu_names: set[str]) -> set[str]:
    """Names ``function`` binds to an attribute or subscript chain (``v = nt.variables``) that
    does not start at its processor: ``v |= {...}`` would change that object in place."""
    found: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.NamedExpr):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            if isinstance(value, ast.Attribute | ast.Subscript):
                root = _root(value)
                if root is None or root.id not in cpu_names:
                    for target in targets:
                        found.update(name for name, _ in _targets(target, None))
    return found


#: What a step may assign on its processor: the shared registers of the surface.
REGISTER_NAMES = frozenset(SHARED_GPRS)


class _StepVisitor(ast.NodeVisitor):
    def __init__(
        self,
        module: _Module,
        label: str,
        whole_module: bool,
        host_functions: dict[str, str],
        out: list[Violation],
    ) -> None:
        self.module = module
        self.label = label
        self.whole = whole_module
        self.host = host_functions
        self.out = out
        self.cpu_names: set[str] = set()
        #: names that reach another module's objects: imports, and aliases of what they reach
        self.foreign: set[str] = set(module.all_imported)
        #: decorators of the functions visited: evaluated at import, host side
        self.decorators: set[int] = set()
        #: an attack step (the catalogue's): attacker code, held to ``step-state``; the bare
        #: kernel's routines in ``vbsim.guest`` keep their own image's state like any kernel
        self.attack = not whole_module and _within(module.name, "vbsim.attacks.catalogue")
        #: names the step bound to containers it built (it may change those)
        self.owned: set[str] = set()
        #: names the step bound to an object reached through an attribute or subscript chain
        self.chained: set[str] = set()

    def report(self, node: ast.AST, rule: str, detail: str) -> None:
        line = getattr(node, "lineno", 0)
        self.out.append(Violation(self.module.path, line, self.label, rule, detail))

    # imports inside guest code
    def _check_import(self, node: ast.Import | ast.ImportFrom) -> None:
        for _, origin, line in _imports(node, self.module.name, self.module.is_package):
            why = forbidden_origin(origin, self.module.name, step=not self.whole)
            if why is not None:
                self.out.append(Violation(self.module.path, line, self.label, "import", why))

    def visit_Import(self, node: ast.Import) -> None:
        self._check_import(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self._check_import(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        saved, label, foreign = set(self.cpu_names), self.label, set(self.foreign)
        owned, chained = set(self.owned), set(self.chained)
        self.cpu_names |= _cpu_params(node)
        self.foreign |= _aliases(node, self.foreign)
        if not self.whole:
            bound = _bound_names(node)
            self.owned = (self.owned - bound) | _owned(node)
            self.chained = (self.chained - bound) | _chain_bound(node, self.cpu_names)
        if not isinstance(node, ast.Lambda):
            self.decorators.update(id(d) for d in node.decorator_list)
        if self.whole and not isinstance(node, ast.Lambda):
            self.label = f"{label}.{node.name}" if label else node.name
        self.generic_visit(node)
        self.cpu_names, self.label, self.foreign = saved, label, foreign
        self.owned, self.chained = owned, chained

    # a step changes only its own locals, its registers and memory
    def _step_store(self, target: ast.expr, augmented: bool = False) -> None:
        if not self.attack:
            return
        if isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                self._step_store(element, augmented)
            return
        if isinstance(target, ast.Starred):
            self._step_store(target.value, augmented)
            return
        if isinstance(target, ast.Name):
            if augmented and target.id in self.chained:
                self.report(
                    target,
                    "step-state",
                    f"{target.id} op= changes in place what {target.id} was bound to "
                    "(another component's object)",
                )
            return
        root = _root(target)
        if (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id in self.cpu_names
            and target.attr in REGISTER_NAMES
        ):
            return  # mov to a register
        if isinstance(target, ast.Subscript) and root is not None:
            if root.id in self.owned:
                return
            chain = target.value
            if (
                isinstance(chain, ast.Attribute)
                and chain.attr == "xmm"
                and isinstance(chain.value, ast.Name)
                and chain.value.id in self.cpu_names
            ):
                return  # the XMM registers
        self.report(
            target,
            "step-state",
            f"changes {ast.unparse(target)} (a step changes only its own locals, its "
            "registers and memory through the CPU)",
        )

    # another module's state
    def _foreign(self, node: ast.expr) -> str | None:
        """The imported (or aliased) name ``node``'s chain starts from, if it has one."""
        root = _root(node)
        return root.id if root is not None and root.id in self.foreign else None

    def _is_module(self, node: ast.expr) -> bool:
        """``node`` is a bare name bound to an imported module (``objdir`` of ``from vbsim.nt
        import objdir``): ``objdir.insert(...)`` calls its function, it changes nothing there."""
        if not isinstance(node, ast.Name) or node.id not in self.module.all_imported:
            return False
        origin = self.module.all_imported[node.id]
        return _source_of(origin) is not None or "." not in origin

    def _store(self, target: ast.expr) -> None:
        if isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                self._store(element)
        elif isinstance(target, ast.Starred):
            self._store(target.value)
        elif isinstance(target, ast.Attribute | ast.Subscript):
            root = self._foreign(target)
            if root is not None:
                self.report(
                    target,
                    "module-state",
                    f"changes {ast.unparse(target)}, reached from {root} (another module's)",
                )

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._store(target)
            self._step_store(target)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._store(node.target)
        self._step_store(node.target, augmented=True)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self._store(node.target)
            self._step_store(node.target)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._store(target)
            self._step_store(target)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        label = self.label
        if self.whole:
            self.label = f"{label}.{node.name}" if label else node.name
        self.generic_visit(node)
        self.label = label

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._function(node)

    def _attribute_name(self, node: ast.AST, name: str, owner: ast.expr | None) -> None:
        if name in FORBIDDEN_ATTRIBUTES:
            self.report(node, "attribute", f".{name} reaches the platform")
        elif name in FORBIDDEN_DUNDERS:
            self.report(node, "introspection", f".{name}")
        elif name.startswith("_") and isinstance(owner, ast.Name) and owner.id in self.cpu_names:
            self.report(node, "cpu-private", f"{owner.id}.{name} is not on the Cpu surface")
        elif (
            name.startswith("_")
            and not name.startswith("__")
            and not (name.endswith("_") and len(name) > 2)  # an enum's _sunder_ names
            and owner is not None
            and self._foreign(owner) is not None
        ):
            self.report(
                node, "module-private", f".{name} of {ast.unparse(owner)} (another module's)"
            )

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._attribute_name(node, node.attr, node.value)
        if node.attr in DYNAMIC_IMPORT_NAMES:
            self.report(node, "introspection", f".{node.attr} (a module found at run time)")
        self._module_attribute(node)
        self.generic_visit(node)

    def _module_attribute(self, node: ast.Attribute) -> None:
        """``mod.Name`` where ``mod`` is an imported module: ``Name`` is judged where it is
        defined, as if imported (``import vbsim.guest.address_space as a; a.GuestRam``)."""
        chain: list[str] = [node.attr]
        value = node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in self.module.all_imported:
            return
        base = self.module.all_imported[value.id]
        if base.startswith(value.id + "."):
            base = value.id  # ``import a.b.c`` binds ``a``: the chain spells the rest
        if value.id == "sys" and base == "sys" and chain[-1] == "modules":
            self.report(node, "introspection", "sys.modules (a module found at run time)")
            return
        if _source_of(base) is None:
            return  # not a module of the tree (a class, a constant, the standard library)
        target = ".".join([base, *reversed(chain)])
        if _source_of(target) is not None or _source_of(target.rpartition(".")[0]) is None:
            return  # a submodule (judged where used) or an attribute of a non-module
        why = forbidden_origin(target, self.module.name, step=not self.whole)
        if why is not None:
            self.report(node, "import", f"uses {value.id}.{'.'.join(reversed(chain))}: {why}")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id == "VirtualProcessor":
            self.report(node, "processor", "names VirtualProcessor")
        elif not self.whole and node.id in self.module.imported:
            why = forbidden_origin(self.module.imported[node.id], self.module.name, step=True)
            if why is not None:
                self.report(node, "import", f"uses {node.id}: {why}")
        if node.id in DYNAMIC_IMPORT_NAMES:
            self.report(node, "introspection", f"{node.id} (a module found at run time)")
        if not self.whole and node.id in self.host:
            self.report(node, "host-call", f"uses host-side {self.host[node.id]}")

    def visit_Call(self, node: ast.Call) -> None:
        callee = node.func.id if isinstance(node.func, ast.Name) else None
        if (
            not self.whole
            and _callee(node) in REGISTRATION_CALLS
            and id(node) not in self.decorators
        ):
            self.report(node, "registration", f"{_callee(node)}() in a step (linking is host side)")
        method = node.func
        if (
            isinstance(method, ast.Attribute)
            and method.attr in MUTATING_METHODS
            and not self._is_module(method.value)
        ):
            root = self._foreign(method.value)
            if root is not None:
                self.report(
                    node,
                    "module-state",
                    f"{ast.unparse(node.func)}() changes what {root} reaches (another module's)",
                )
        if callee in ("setattr", "delattr") and node.args:
            root = self._foreign(node.args[0])
            if root is not None:
                self.report(node, "module-state", f"{callee}() on {root} (another module's)")
        if self.attack and _callee(node) in MUTATING_FUNCTIONS:
            self.report(node, "step-state", f"{_callee(node)}() changes the object it is given")
        if (
            self.attack
            and isinstance(method, ast.Attribute)
            and method.attr in MUTATING_METHODS
            and not self._is_module(method.value)
        ):
            root = _root(method.value)
            if root is None or root.id not in self.owned:
                self.report(
                    node,
                    "step-state",
                    f"{ast.unparse(method)}() changes an object the step did not build",
                )
        if callee in FORBIDDEN_CALLS:
            self.report(node, "introspection", f"{callee}()")
        if callee in HOST_CALLS:
            self.report(node, "host-call", f"{callee}() (the host's files or code)")
        if callee in ATTRIBUTE_FUNCTIONS and len(node.args) >= 2:
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                owner = node.args[0]
                self._attribute_name(node, name.value, owner)
            elif callee in DYNAMIC_ATTRIBUTE_FUNCTIONS:
                self.report(node, "introspection", f"{callee}() with a computed name")
        if _callee(node) in ATTRIBUTE_GETTERS:
            for argument in node.args:
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    for part in argument.value.split("."):
                        self._attribute_name(node, part, None)
                else:
                    self.report(node, "introspection", f"{_callee(node)}() with a computed name")
                if _callee(node) == "methodcaller":
                    break  # its other arguments are the call's, not names
        self.generic_visit(node)


def _host_side(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A function that takes a host object (the attack context, the machine ...).  Pure helpers
    — encoders, image builders, numbers in and out — are neither guest nor host."""
    args = function.args
    return any(
        _annotation_name(a.annotation) in HOST_TYPES
        for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)
    )


def _reaches_host(module: _Module, function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """``function`` names something a step may not: a module-level import from the host side
    (``DEFAULT_LOGON`` of ``vbsim.boot.logon``, say).  A helper that returns the logon's OWF is
    the host's secret handed to whoever calls it."""
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Name)
            and node.id in module.imported
            and forbidden_origin(module.imported[node.id], module.name, step=True) is not None
        ):
            return True
    return False


def _host_side_names(module: _Module, steps: set[str]) -> set[str]:
    """The module's functions that are host side: they take a host object, name a host-side
    import, or call such a function of the module (to a fixed point)."""
    candidates = {name: f for name, f in module.functions.items() if name not in steps}
    host = {n for n, f in candidates.items() if _host_side(f) or _reaches_host(module, f)}
    changed = True
    while changed:
        changed = False
        for name, function in candidates.items():
            if name in host:
                continue
            called = {n.id for n in ast.walk(function) if isinstance(n, ast.Name) and n.id in host}
            if called:
                host.add(name)
                changed = True
    return host


_PEER_HOST: dict[str, set[str]] = {}


def _peer_host_names(owner: str) -> set[str]:
    """The host-side functions of another mixed module of the tree (parsed on demand)."""
    if owner not in _PEER_HOST:
        path = _source_of(owner)
        names: set[str] = set()
        if path is not None and any(_within(owner, p) for p in MIXED_PACKAGES):
            peer = _parse(path, _PLANTED.get(owner), owner)
            names = _host_side_names(peer, {label for label, _ in _find_steps(peer)})
        _PEER_HOST[owner] = names
    return _PEER_HOST[owner]


def _host_functions(modules: Iterable[_Module]) -> dict[str, dict[str, str]]:
    """Per module: the names a step there would reach host-side code through (its own
    functions, and those it imports, anywhere in the module, from other mixed modules)."""
    steps_by_module = {m.name: {label for label, _ in m.steps} for m in modules}
    host_by_module = {m.name: _host_side_names(m, steps_by_module[m.name]) for m in modules}
    result: dict[str, dict[str, str]] = {}
    for module in modules:
        local = {name: f"{module.name}.{name}" for name in host_by_module[module.name]}
        for bound, origin in module.all_imported.items():
            owner, _, attr = origin.rpartition(".")
            if owner == module.name:
                continue
            peer = host_by_module.get(owner)
            if peer is None:
                peer = _peer_host_names(owner)
            if attr in peer:
                local[bound] = origin
        result[module.name] = local
    return result


def check_modules(modules: list[_Module]) -> list[Violation]:
    out: list[Violation] = []
    mixed = [m for m in modules if any(_within(m.name, p) for p in MIXED_PACKAGES)]
    for module in mixed:
        module.steps = _find_steps(module)
        out.extend(module.handed)
    hosts = _host_functions(mixed)
    for module in modules:
        if module in mixed:
            for label, function in module.steps:
                visitor = _StepVisitor(module, label, False, hosts[module.name], out)
                # The step's own name is not a host call; its body is what is checked.
                visitor.visit(function)
                out.extend(_closure_violations(module, label, function))
        else:
            _StepVisitor(module, "", True, {}, out).visit(module.tree)
    return sorted(set(out))


def guest_files(src: Path = SRC) -> list[Path]:
    roots = [*GUEST_PACKAGES, *MIXED_PACKAGES]
    files: list[Path] = []
    for root in roots:
        files.extend(sorted((src / root.replace(".", "/")).rglob("*.py")))
    return files


def check_files(paths: Iterable[Path]) -> list[Violation]:
    return check_modules([_parse(path) for path in paths])


def check_source(
    source: str, module: str, path: str = "<planted>", modules: dict[str, str] | None = None
) -> list[Violation]:
    """Check one module's source as if it were ``module`` (for planted-violation tests), with
    ``modules`` (name → source) added to the tree for the time of the check (a planted module
    that re-exports a name, say)."""
    fake = Path(path)
    planted = dict(modules or {})
    saved = {name: _BINDINGS.pop(name) for name in planted if name in _BINDINGS}
    _PLANTED.update(planted)
    try:
        return check_modules([_parse(fake, source, module)])
    finally:
        for name in planted:
            _PLANTED.pop(name, None)
            _BINDINGS.pop(name, None)
        _BINDINGS.update(saved)


def steps_of(path: Path) -> list[str]:
    """The step labels the checker finds in a mixed module (for tests and for the curious)."""
    module = _parse(path)
    return [label for label, _ in _find_steps(module)]


def by_file(violations: Iterable[Violation]) -> dict[str, list[Violation]]:
    grouped: dict[str, list[Violation]] = {}
    for violation in violations:
        grouped.setdefault(violation.path, []).append(violation)
    return grouped


def violation_key(function: str, rule: str, detail: str) -> str:
    """How ``known_debt.json`` names a violation (no line number: edits elsewhere move it)."""
    return f"{function or '<module>'} | {rule} | {detail}"


def debt_entries(violations: Iterable[Violation]) -> dict[str, dict[str, int]]:
    """The violations as ``known_debt.json`` records them: per file, key → count."""
    from collections import Counter

    out: dict[str, dict[str, int]] = {}
    for path, found in by_file(violations).items():
        rel = str(Path(path).relative_to(SRC.parent))
        counts = Counter(violation_key(v.function, v.rule, v.detail) for v in found)
        out[rel] = dict(sorted(counts.items()))
    return dict(sorted(out.items()))


def main() -> int:
    violations = check_files(guest_files())
    if "--write-debt" in sys.argv:
        import json

        debt_file = Path(__file__).with_name("known_debt.json")
        data = json.loads(debt_file.read_text()) if debt_file.exists() else {}
        data["violations"] = debt_entries(violations)
        debt_file.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"{len(violations)} violation(s) written to {debt_file.name}")
        return 0
    for path, found in by_file(violations).items():
        print(f"{Path(path).relative_to(SRC.parent)}: {len(found)}")
        for violation in found:
            print(
                f"  {violation.line}: {violation.function or '<module>'}: "
                f"{violation.rule}: {violation.detail}"
            )
    print(f"{len(violations)} violation(s)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
