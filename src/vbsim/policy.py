"""The machine's policy: the real VBS switches, as data (DESIGN.md "Policy is configuration").

Each field mirrors a real switch (vbs-internals §1.4): ``EnableVirtualizationBasedSecurity``,
HVCI (``HypervisorEnforcedCodeIntegrity``), Credential Guard, KDP, HVPT, Kernel DMA Protection,
MBEC present on the processor, UEFI lock (``Locked``), ``Mandatory``, the SkuSiPolicy revocation
floors, the component versions installed on disk, the Windows build whose secure-call numbers are
used (vbs-internals §2.4 tables A and B), and legacy switches that bring back historical bugs.

A policy loads from TOML; a bad file gets a :class:`PolicyError` naming the field.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

BUILDS = ("A", "B")
#: Guest RAM a policy may give a machine, in MiB: 16 MiB to 64 GiB (the largest boots:
#: tests/boot/test_large_ram.py).  The model's stated maximum, for ``vbsim machine --ram`` too.
RAM_MIB_RANGE = (16, 65536)
COMPONENTS = ("hvix64.exe", "securekernel.exe", "ntoskrnl.exe", "LsaIso.exe")


class PolicyError(ValueError):
    """A policy file or preset name that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Component:
    """A boot component as installed on disk."""

    version: str = "10.0.26100.2314"
    svn: int = 7
    #: A byte of the installed image was changed after signing (invalidated, e.g. Downdate's
    #: "invalidated securekernel.exe").
    tampered: bool = False

    def version_tuple(self) -> tuple[int, int, int, int]:
        parts = [int(p) for p in self.version.split(".")]
        while len(parts) < 4:
            parts.append(0)
        return (parts[0], parts[1], parts[2], parts[3])


@dataclass(frozen=True)
class Floor:
    """A SkuSiPolicy-style revocation floor for one component."""

    min_version: str | None = None
    min_svn: int | None = None


@dataclass(frozen=True)
class Legacy:
    """Switches that reproduce historical bugs (vbs-internals §6)."""

    #: The Secure Kernel trusts secure-call parameters (MDL byte counts, PFNs, handles), as before
    #: the CVE-2020-0917/0918 fixes (Amar & King, Black Hat 2020).
    unchecked_securecall_params: bool = False
    #: The Secure Kernel reads a VTL0 buffer twice (check, then use) instead of capturing it.
    securecall_double_fetch: bool = False


@dataclass(frozen=True)
class Policy:
    name: str = "custom"
    description: str = ""
    vbs: bool = True
    hvci: bool = False
    credential_guard: bool = True
    #: Kernel Data Protection runs.  KDP needs only VBS: MmProtectDriverSection fails with
    #: STATUS_INVALID_DEVICE_STATE only when "Virtual Secure Mode (VSM) is currently disabled"
    #: (Microsoft Learn, MmProtectDriverSection), and the KDP announcement names VBS as its only
    #: requirement (Microsoft Security Blog, "Introducing Kernel Data Protection", 2020-07-08).
    #: So it is on wherever VBS runs on a build that has it (Windows Insider 19548 / 20H1 and
    #: later, same Learn page); False only models a build before KDP (legacy-2019).
    kdp: bool = True
    hvpt: bool = False
    #: HyperGuard (Secure Kernel Patch Guard): the SK's secure intercepts on VTL0 writes to
    #: control registers, MSRs and descriptor tables (vbs-internals §5.7).  What the record
    #: supports: it is part of the Secure Kernel on every VBS system described (WI7-P2
    #: "HyperGuard": it starts with SKCI at PHASE3_INIT); NT hands it the MSR and control-register
    #: extents (types 0x1003, 0x1006, 0x100C) and SkpgConnect installs the intercepts on every
    #: processor by IPI (SkpgxInstallIntercepts; Shafir, "HyperGuard" parts 1-3,
    #: windows-internals.com 2022).  No public VBS configuration runs without it; the switch lets
    #: a study isolate it (A4 follows it).
    hyperguard: bool = True
    kernel_dma_protection: bool = False
    mbec: bool = True
    uefi_lock: bool = False
    mandatory: bool = False
    secure_boot: bool = True
    build: str = "B"
    ram_mib: int = 256
    vps: int = 2
    #: The seed of the platform's random-number generator (vbsim.hw.entropy: RDRAND and the
    #: loader's boot entropy).  None draws one from the host per boot; a number makes every boot
    #: of this policy reproduce the same keys, GUIDs and nonces (a soak job sets it to replay).
    entropy_seed: int | None = None
    components: Mapping[str, Component] = field(
        default_factory=lambda: {name: Component() for name in COMPONENTS}
    )
    revocation: Mapping[str, Floor] = field(default_factory=dict)
    legacy: Legacy = field(default_factory=Legacy)

    def component(self, name: str) -> Component:
        return self.components.get(name, Component())

    def with_changes(self, **changes: Any) -> Policy:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "components":
                value = {k: vars(c).copy() for k, c in value.items()}
            elif f.name == "revocation":
                value = {
                    k: {a: b for a, b in vars(v).items() if b is not None} for k, v in value.items()
                }
            elif f.name == "legacy":
                value = vars(value).copy()
            elif value is None:
                continue  # an unset optional field (TOML has no null): from_dict's default
            out[f.name] = value
        return out


_BOOL_FIELDS = (
    "vbs",
    "hvci",
    "credential_guard",
    "kdp",
    "hvpt",
    "hyperguard",
    "kernel_dma_protection",
    "mbec",
    "uefi_lock",
    "mandatory",
    "secure_boot",
)


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if isinstance(value, bool) and kind is int:
        raise PolicyError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise PolicyError(f"{where}: expected {names}, got {value!r}")
    return value


_ASCII_DIGITS = frozenset("0123456789")


def _version(text: Any, where: str) -> str:
    """Up to four dot-separated 16-bit parts (VS_FIXEDFILEINFO), ASCII digits only."""
    _expect(text, str, where)
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(
        p and len(p) <= 5 and set(p) <= _ASCII_DIGITS and int(p) <= 0xFFFF for p in parts
    ):
        raise PolicyError(
            f"{where}: expected a version like 10.0.26100.2314 (parts 0..65535), got {text!r}"
        )
    return str(text)


def _svn(value: Any, where: str) -> int:
    _expect(value, int, where)
    if not 0 <= value <= 0xFFFF_FFFF:
        raise PolicyError(f"{where}: an SVN is 0..4294967295, got {value}")
    return int(value)


def _component_name(name: str, where: str) -> str:
    if name not in COMPONENTS:
        raise PolicyError(f"{where}: unknown component {name!r} (known: {', '.join(COMPONENTS)})")
    return name


def from_dict(data: Mapping[str, Any], base: Policy | None = None) -> Policy:
    """Build a policy from parsed TOML, starting from ``base`` (or the defaults)."""
    policy = base or Policy()
    changes: dict[str, Any] = {}
    known = {f.name for f in fields(Policy)} | {"preset"}
    for key in data:
        if key not in known:
            raise PolicyError(f"unknown field {key!r} (known: {', '.join(sorted(known))})")
    if "preset" in data and base is None:
        policy = preset(_expect(data["preset"], str, "preset"))
    for key in _BOOL_FIELDS:
        if key in data:
            changes[key] = _expect(data[key], bool, key)
    for key in ("name", "description"):
        if key in data:
            changes[key] = _expect(data[key], str, key)
    if "build" in data:
        build = _expect(data["build"], str, "build")
        if build not in BUILDS:
            raise PolicyError(f"build: expected one of {', '.join(BUILDS)}, got {build!r}")
        changes["build"] = build
    if "ram_mib" in data:
        ram = _expect(data["ram_mib"], int, "ram_mib")
        low, high = RAM_MIB_RANGE
        if not low <= ram <= high:
            raise PolicyError(f"ram_mib: expected {low}..{high}, got {ram}")
        changes["ram_mib"] = ram
    if "vps" in data:
        vps = _expect(data["vps"], int, "vps")
        if not 1 <= vps <= 64:
            raise PolicyError(f"vps: expected 1..64, got {vps}")
        changes["vps"] = vps
    if "entropy_seed" in data:
        seed = _expect(data["entropy_seed"], int, "entropy_seed")
        if not 0 <= seed < 1 << 128:
            raise PolicyError(f"entropy_seed: expected 0..2**128-1, got {seed}")
        changes["entropy_seed"] = seed
    if "components" in data:
        table = _expect(data["components"], dict, "components")
        components = dict(policy.components)
        for name, spec in table.items():
            where = f"components.{name}"
            _component_name(name, where)
            spec = _expect(spec, dict, where)
            unknown = set(spec) - {"version", "svn", "tampered"}
            if unknown:
                raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
            current = components.get(name, Component())
            components[name] = Component(
                version=_version(spec["version"], f"{where}.version")
                if "version" in spec
                else current.version,
                svn=_svn(spec.get("svn", current.svn), f"{where}.svn"),
                tampered=_expect(spec.get("tampered", current.tampered), bool, f"{where}.tampered"),
            )
        changes["components"] = components
    if "revocation" in data:
        table = _expect(data["revocation"], dict, "revocation")
        floors = dict(policy.revocation)  # merged over the preset's floors, like [components]
        for name, spec in table.items():
            where = f"revocation.{name}"
            _component_name(name, where)
            spec = _expect(spec, dict, where)
            unknown = set(spec) - {"min_version", "min_svn"}
            if unknown:
                raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
            floors[name] = Floor(
                min_version=_version(spec["min_version"], f"{where}.min_version")
                if "min_version" in spec
                else None,
                min_svn=_svn(spec["min_svn"], f"{where}.min_svn")  # the range components have
                if "min_svn" in spec
                else None,
            )
        changes["revocation"] = floors
    if "legacy" in data:
        table = _expect(data["legacy"], dict, "legacy")
        known_legacy = {f.name for f in fields(Legacy)}
        for key in table:
            if key not in known_legacy:
                raise PolicyError(
                    f"legacy: unknown switch {key!r} (known: {', '.join(sorted(known_legacy))})"
                )
        switches = {k: _expect(v, bool, f"legacy.{k}") for k, v in table.items()}
        changes["legacy"] = replace(policy.legacy, **switches)
    return replace(policy, **changes)


#: A policy file is a few hundred bytes; more than this is not one (``/dev/zero`` never ends).
MAX_POLICY_FILE = 256 * 1024


def _read_policy_file(path: Path) -> str:
    try:
        if path.is_dir():
            raise PolicyError(f"cannot read policy file {str(path)!r}: it is a directory")
        if path.exists() and not path.is_file():
            raise PolicyError(f"policy file {str(path)!r} is not a regular file")
        with path.open("rb") as handle:
            raw = handle.read(MAX_POLICY_FILE + 1)
    except OSError as error:
        raise PolicyError(f"cannot read policy file {str(path)!r}: {error.strerror}") from error
    if len(raw) > MAX_POLICY_FILE:
        raise PolicyError(f"policy file {str(path)!r} is larger than {MAX_POLICY_FILE} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PolicyError(f"{str(path)!r}: not UTF-8 text (byte {error.start})") from error


_UNSET = object()


def _shown(value: Any) -> str:
    """A setting's value as a policy file spells it (``true``, ``7``, ``"B"``), or ``unset``."""
    if value is _UNSET:
        return "unset"
    return json.dumps(value, ensure_ascii=False)


def settings(policy: Policy) -> dict[str, Any]:
    """Every setting but the name and description, one dotted key a value, in field order:
    ``hvci``, ``components.securekernel.exe.svn``, ``revocation.LsaIso.exe.min_svn``,
    ``legacy.securecall_double_fetch`` (an unset floor or seed has no key)."""
    out: dict[str, Any] = {}
    for key, value in policy.to_dict().items():
        if key in ("name", "description"):
            continue
        if not isinstance(value, dict):
            out[key] = value
            continue
        for sub, item in value.items():
            if isinstance(item, dict):
                out.update({f"{key}.{sub}.{leaf}": v for leaf, v in item.items()})
            else:
                out[f"{key}.{sub}"] = item
    return out


def differences(policy: Policy, base: Policy) -> list[str]:
    """``setting: base -> policy`` for every setting that differs, nested ones field by field
    (``components.securekernel.exe.svn: 7 -> 3``), values as a policy file writes them."""
    mine, theirs = settings(policy), settings(base)
    order = [f.name for f in fields(Policy)]
    keys = sorted(dict.fromkeys([*theirs, *mine]), key=lambda k: order.index(k.split(".")[0]))
    out = []
    for key in keys:
        old, new = theirs.get(key, _UNSET), mine.get(key, _UNSET)
        if old != new:
            out.append(f"{key}: {_shown(old)} -> {_shown(new)}")
    return out


#: Settings that need VBS to mean anything (vbs-internals §0: they are VBS features).  ``kdp`` is
#: not among them: it says whether the build has KDP (on by default, since KDP comes with VBS on
#: 20H1+), so ``vbs = false`` alone is no contradiction to warn about.
_NEEDS_VBS = ("hvci", "credential_guard", "hvpt", "uefi_lock", "mandatory")


def warnings(policy: Policy, given: Collection[str] | None = None) -> list[str]:
    """Settings of ``policy`` that cannot take effect, each as a sentence.  With ``given`` (the
    settings a policy file wrote), only those: a value the file inherited from its preset is
    the preset's, not something the file asked for (``preset = "hardened"`` with ``vbs = false``
    warns about nothing; ``preset = "vbs-off"`` with ``hvci = true`` warns about hvci)."""

    def asked(key: str) -> bool:
        return given is None or key in given

    out = []
    if not policy.vbs:
        for key in _NEEDS_VBS:
            if getattr(policy, key, False) and asked(key):
                out.append(f"{key} = true cannot take effect with vbs = false")
    if policy.hvpt and not (policy.hvci or policy.kdp) and asked("hvpt"):
        # HVPT pins KDP's pages and NT's code (vbs-internals §5.6): with KDP it has work to do.
        out.append(
            "hvpt = true protects HVCI's and KDP's pages; without hvci or kdp it has nothing "
            "to protect"
        )
    return out


@dataclass(frozen=True)
class LoadedPolicy:
    """A policy file, loaded: the policy, the preset it starts from (None: the defaults), the
    settings the file wrote, what differs from the start, and what cannot take effect."""

    policy: Policy
    base: Policy | None
    given: frozenset[str]
    changes: tuple[str, ...]
    warnings: tuple[str, ...]


def _file_name(path: Path) -> str:
    """The file's name for a banner: bytes that are not UTF-8 (a name Python decoded with
    surrogate escapes) as ``\\xNN``, so no lone surrogate reaches JSON or a terminal."""
    return os.fsencode(path.name or str(path)).decode("utf-8", "backslashreplace")


def load_file(path: str | Path) -> LoadedPolicy:
    """Load a TOML policy file.  ``preset = "NAME"`` starts from a preset.  A file that changes
    nothing of its preset is that preset.  Any other file is a custom policy, and says so
    whatever it calls itself: ``custom policy [NAME] (from FILE), based on PRESET`` (or "the
    defaults"), its description followed by what it changed, so no file passes itself off as a
    preset (``name = "hardened"`` with ``hvci = false`` is not "policy hardened")."""
    if not str(path):
        raise PolicyError("policy file name is empty: give the path of a TOML file")
    text = _read_policy_file(Path(path))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PolicyError(f"{str(path)!r}: not valid TOML: {error}") from error
    except RecursionError as error:
        raise PolicyError(f"{str(path)!r}: nested too deeply to be a policy") from error
    base = None
    if "preset" in data:
        base = preset(_expect(data["preset"], str, "preset"))
    policy = from_dict(data, base)
    start = base if base is not None else Policy()
    changed = differences(policy, start)
    given = frozenset(data) - {"preset"}
    named = "name" in data and policy.name.strip() != ""
    described = "description" in data and policy.description.strip() != ""
    if base is None or changed or "name" in data or "description" in data:
        own_name = f" {policy.name.strip()}" if named else ""
        based_on = start.name if base is not None else "the defaults"
        what = "changes: " + "; ".join(changed) if changed else "no changes"
        policy = replace(
            policy,
            name=f"custom policy{own_name} (from {_file_name(Path(path))}), based on {based_on}",
            description=f"{policy.description.strip()}; {what}" if described else what,
        )
    return LoadedPolicy(policy, base, given, tuple(changed), tuple(warnings(policy, given)))


def load(path: str | Path) -> Policy:
    """The policy of a TOML policy file (:func:`load_file`)."""
    return load_file(path).policy


# -- presets (issue 5's list; hardened per MS-MemInt and vbs-internals §1.4, §6 A15-A17) --------
# HyperGuard is on in every preset with VBS, legacy-2019 included: WI7-P2 describes it as part of
# the Secure Kernel's startup (PHASE3_INIT) with no switch of its own, Shafir (2022) shows
# SkpgConnect running once NT finishes initialising, and the 2019-era Secure Kernel already had it
# (Amar & King, Black Hat 2020, hijacked its SkpgContext callback).
_CURRENT = {name: Component() for name in COMPONENTS}
_FLOORS = {
    "securekernel.exe": Floor(min_version="10.0.26100.2314", min_svn=7),
    "hvix64.exe": Floor(min_version="10.0.26100.2314", min_svn=7),
    "ntoskrnl.exe": Floor(min_version="10.0.26100.2314"),
    "LsaIso.exe": Floor(min_version="10.0.26100.2314", min_svn=7),
}

PRESETS: dict[str, Policy] = {
    "vbs-off": Policy(
        name="vbs-off",
        description="No hypervisor, no VTL1: NT alone.",
        vbs=False,
        credential_guard=False,
        kdp=False,  # KDP is a VSM service: nothing to run it without VBS
        hyperguard=False,  # HyperGuard lives in the Secure Kernel (WI7-P2): none without VBS
    ),
    # KDP needs VBS only (MS Learn MmProtectDriverSection; MS-KDP blog 2020-07-08): on in every
    # preset where VBS runs on a 20H1+ build.
    "vbs": Policy(name="vbs", description="VBS with Credential Guard and KDP.", kdp=True),
    "vbs-hvci": Policy(
        name="vbs-hvci", description="VBS, Credential Guard, HVCI and KDP.", hvci=True, kdp=True
    ),
    "hardened": Policy(
        name="hardened",
        description="VBS, Credential Guard, HVCI, KDP, HVPT, Kernel DMA Protection, UEFI lock, "
        "Mandatory and a SkuSiPolicy revocation policy.",
        hvci=True,
        kdp=True,
        hvpt=True,
        kernel_dma_protection=True,
        uefi_lock=True,
        mandatory=True,
        components=_CURRENT,
        revocation=_FLOORS,
    ),
    "legacy-2019": Policy(
        name="legacy-2019",
        description="VBS as shipped before the 2019-2020 Secure Kernel fixes (CVE-2020-0917/0918).",
        build="A",
        # Build A is the 2019-era table: MmProtectDriverSection first shipped in Windows Insider
        # build 19548 (MS Learn, "Requirements"), KDP with 20H1 (MS-KDP blog, 2020-07-08).
        kdp=False,
        legacy=Legacy(unchecked_securecall_params=True, securecall_double_fetch=True),
    ),
}


def preset(name: str) -> Policy:
    try:
        return PRESETS[name]
    except KeyError:
        raise PolicyError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None
