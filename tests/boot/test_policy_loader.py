"""The policy file loader: presets with overrides, and a PolicyError naming the field for every
kind of bad input — never another exception."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vbsim.policy import (
    COMPONENTS,
    PRESETS,
    Component,
    Floor,
    Legacy,
    Policy,
    PolicyError,
    from_dict,
    load,
    preset,
)

HARDENED_WITH_OVERRIDES = """\
preset = "hardened"
name = "hardened-lab"
description = "hardened, 4 VPs, an old Secure Kernel on disk"
vps = 4
ram_mib = 512
hvpt = false
build = "A"

[components."securekernel.exe"]
version = "10.0.22621.1"
svn = 3

[revocation."LsaIso.exe"]
min_svn = 9

[legacy]
unchecked_securecall_params = true
"""


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_file_with_preset_and_overrides(tmp_path: Path) -> None:
    policy = load(write(tmp_path, HARDENED_WITH_OVERRIDES))
    base = preset("hardened")
    # Overrides applied ...
    # A file that names itself is still a custom policy, and says what it changed.
    assert policy.name == "custom policy hardened-lab (from policy.toml), based on hardened"
    assert policy.description.startswith("hardened, 4 VPs, an old Secure Kernel on disk; changes: ")
    assert policy.vps == 4 and policy.ram_mib == 512
    assert policy.hvpt is False and policy.build == "A"
    assert policy.components["securekernel.exe"] == Component("10.0.22621.1", 3, False)
    assert policy.revocation["LsaIso.exe"] == Floor(min_version=None, min_svn=9)
    assert policy.legacy == Legacy(unchecked_securecall_params=True)
    # ... everything else comes from the preset.
    for field in ("vbs", "hvci", "credential_guard", "kdp", "kernel_dma_protection"):
        assert getattr(policy, field) == getattr(base, field)
    assert policy.uefi_lock and policy.mandatory and policy.secure_boot
    for name in COMPONENTS:
        if name != "securekernel.exe":
            assert policy.components[name] == base.components[name]
    # The preset itself is untouched.
    assert preset("hardened") == base and base.vps == 2


def test_file_without_preset_starts_from_defaults(tmp_path: Path) -> None:
    policy = load(write(tmp_path, "credential_guard = false\n"))
    assert replace(policy, name="custom", description="") == Policy(credential_guard=False)
    assert policy.name == "custom policy (from policy.toml), based on the defaults"
    assert policy.description == "changes: credential_guard: true -> false"


def test_empty_file_is_the_default_policy(tmp_path: Path) -> None:
    policy = load(write(tmp_path, ""))
    assert replace(policy, name="custom", description="") == Policy()
    assert policy.description == "no changes"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_loads_from_a_file(tmp_path: Path, name: str) -> None:
    assert load(write(tmp_path, f'preset = "{name}"\n')) == preset(name)


def test_round_trip_through_to_dict() -> None:
    for name in PRESETS:
        data = preset(name).to_dict()
        assert from_dict(data) == preset(name)


BAD_FILES: list[tuple[str, str, str]] = [
    # (id, TOML text, text the message must contain)
    ("unknown-field", "vbss = true\n", "vbss"),
    ("unknown-field-in-preset-file", 'preset = "vbs"\nhypervisor = 1\n', "hypervisor"),
    ("wrong-type-bool", 'vbs = "yes"\n', "vbs"),
    ("wrong-type-int-as-bool", "hvci = 1\n", "hvci"),
    ("wrong-type-bool-as-int", "vps = true\n", "vps"),
    ("wrong-type-float", "ram_mib = 256.0\n", "ram_mib"),
    ("wrong-type-name", "name = 5\n", "name"),
    ("wrong-type-build", "build = 2\n", "build"),
    ("unknown-build", 'build = "C"\n', "build"),
    ("wrong-type-components", "components = 5\n", "components"),
    ("wrong-type-component", 'components = { "securekernel.exe" = 1 }\n', "securekernel.exe"),
    (
        "wrong-type-svn",
        '[components."securekernel.exe"]\nsvn = "7"\n',
        "components.securekernel.exe.svn",
    ),
    (
        "wrong-type-tampered",
        '[components."securekernel.exe"]\ntampered = "yes"\n',
        "components.securekernel.exe.tampered",
    ),
    (
        "unknown-component-key",
        '[components."securekernel.exe"]\nsigned = false\n',
        "components.securekernel.exe",
    ),
    ("wrong-type-revocation", 'revocation = "all"\n', "revocation"),
    (
        "wrong-type-min-svn",
        '[revocation."hvix64.exe"]\nmin_svn = 1.5\n',
        "revocation.hvix64.exe.min_svn",
    ),
    (
        "unknown-floor-key",
        '[revocation."hvix64.exe"]\nmax_svn = 1\n',
        "revocation.hvix64.exe",
    ),
    ("wrong-type-legacy", "legacy = true\n", "legacy"),
    ("wrong-type-legacy-switch", "[legacy]\nsecurecall_double_fetch = 1\n", "legacy"),
    ("unknown-legacy-switch", "[legacy]\nunchecked_everything = true\n", "unchecked_everything"),
    ("unknown-preset", 'preset = "paranoid"\n', "paranoid"),
    ("wrong-type-preset", "preset = 1\n", "preset"),
    ("vps-zero", "vps = 0\n", "vps"),
    ("vps-too-many", "vps = 65\n", "vps"),
    ("vps-negative", "vps = -1\n", "vps"),
    ("ram-too-small", "ram_mib = 15\n", "ram_mib"),
    ("ram-too-large", "ram_mib = 65537\n", "ram_mib"),
    ("invalid-toml", "vbs = \n", "not valid TOML"),
    ("invalid-toml-duplicate-key", "vbs = true\nvbs = false\n", "not valid TOML"),
    ("invalid-toml-unclosed-table", "[components\n", "not valid TOML"),
]
BAD_VERSIONS = ["", "10.0.x", "1.2.3.4.5", "10..0", "v10", "123456", " 10.0", "10.0.-1", "1e3"]


@pytest.mark.parametrize(
    ("text", "needle"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES]
)
def test_bad_file_raises_policy_error_naming_the_field(
    tmp_path: Path, text: str, needle: str
) -> None:
    with pytest.raises(PolicyError) as error:
        load(write(tmp_path, text))
    assert needle in str(error.value)


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_bad_version_strings(tmp_path: Path, version: str) -> None:
    text = f'[components."securekernel.exe"]\nversion = {json.dumps(version)}\n'
    with pytest.raises(PolicyError) as error:
        load(write(tmp_path, text))
    assert "components.securekernel.exe.version" in str(error.value)
    text = f'[revocation."securekernel.exe"]\nmin_version = {json.dumps(version)}\n'
    with pytest.raises(PolicyError) as error:
        load(write(tmp_path, text))
    assert "revocation.securekernel.exe.min_version" in str(error.value)


@pytest.mark.parametrize("version", ["10", "10.0", "10.0.26100", "10.0.26100.2314", "0.0.0.0"])
def test_good_version_strings(tmp_path: Path, version: str) -> None:
    text = f'[components."securekernel.exe"]\nversion = "{version}"\n'
    assert load(write(tmp_path, text)).components["securekernel.exe"].version == version


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(PolicyError) as error:
        load(missing)
    assert "cannot read policy file" in str(error.value) and "nope.toml" in str(error.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load(tmp_path)


def test_unknown_preset_name() -> None:
    with pytest.raises(PolicyError, match="unknown preset 'paranoid'"):
        preset("paranoid")


# -- bugs in vbsim.policy (not owned by this suite) ----------------------------------------------
def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(PolicyError):
        load(path)


def test_deeply_nested_toml(tmp_path: Path) -> None:
    with pytest.raises(PolicyError):
        load(write(tmp_path, "name = " + "[" * 5000 + "]" * 5000 + "\n"))


def test_version_part_beyond_16_bits_is_rejected() -> None:
    with pytest.raises(PolicyError, match=r"components\.securekernel\.exe\.version"):
        from_dict({"components": {"securekernel.exe": {"version": "10.0.70000.1"}}})


def test_non_ascii_digits_in_version_are_rejected() -> None:
    with pytest.raises(PolicyError, match=r"components\.securekernel\.exe\.version"):
        from_dict({"components": {"securekernel.exe": {"version": "10.0.²"}}})


@pytest.mark.parametrize("svn", [-1, 1 << 32])
def test_svn_out_of_range_is_rejected(svn: int) -> None:
    with pytest.raises(PolicyError, match=r"components\.securekernel\.exe\.svn"):
        from_dict({"components": {"securekernel.exe": {"svn": svn}}})


@pytest.mark.parametrize("table", ["components", "revocation"])
def test_unknown_component_name_is_rejected(table: str) -> None:
    spec = {"svn": 1} if table == "components" else {"min_svn": 1}
    with pytest.raises(PolicyError, match=r"securekernl\.exe"):
        from_dict({table: {"securekernl.exe": spec}})


def test_revocation_override_keeps_the_presets_other_floors(tmp_path: Path) -> None:
    policy = load(write(tmp_path, HARDENED_WITH_OVERRIDES))
    floor = preset("hardened").revocation["securekernel.exe"]
    assert policy.revocation.get("securekernel.exe") == floor


# -- properties ------------------------------------------------------------------------------------
FIELDS = [*Policy.__dataclass_fields__, "preset"]
scalars = st.one_of(
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.sampled_from([0, 1, 2, 15, 16, 64, 65, 256, 65536, 65537]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["A", "B", "C", "10.0.26100.2314", "1.2.3.4.5", "vbs", "hardened", "x"]),
    st.none(),
)
keys = st.one_of(
    st.sampled_from(FIELDS),
    st.sampled_from([*COMPONENTS, "version", "svn", "tampered", "min_version", "min_svn"]),
    st.sampled_from(["unchecked_securecall_params", "securecall_double_fetch"]),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(keys, values, max_size=6))
@example({"components": {"securekernel.exe": {"svn": "7"}}})
@example({"revocation": {"x": {"min_version": None}}})
@example({"legacy": {"securecall_double_fetch": 1}})
@example({"preset": 5})
def test_from_dict_raises_only_policy_error(data: dict[str, Any]) -> None:
    try:
        policy = from_dict(data)
    except PolicyError as error:
        assert str(error)
        return
    assert isinstance(policy, Policy)
    assert 1 <= policy.vps <= 64 and 16 <= policy.ram_mib <= 65536
    assert policy.build in ("A", "B")


def _toml_key(key: str) -> str:
    return json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        items = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }"
    return '""'


def to_toml(data: dict[str, Any]) -> str:
    """A small TOML writer: scalars and inline tables at the top, then [tables]."""
    lines = [
        f"{_toml_key(k)} = {_toml_value(v)}"
        for k, v in data.items()
        if v is not None and not isinstance(v, dict)
    ]
    for key, table in data.items():
        if isinstance(table, dict):
            lines.append(f"[{_toml_key(key)}]")
            lines += [
                f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None
            ]
    return "\n".join(lines) + "\n"


def _load_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "policy.toml"
        path.write_text(text, encoding="utf-8")
        try:
            policy = load(path)
        except PolicyError as error:
            assert str(error)
            return
        assert isinstance(policy, Policy)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=6))
@example({"preset": "hardened", "vps": 4, "components": {"securekernel.exe": {"svn": 3}}})
@example({"preset": "nope"})
def test_load_of_generated_toml_raises_only_policy_error(data: dict[str, Any]) -> None:
    _load_text(to_toml(data))


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.lists(
            st.sampled_from(
                [
                    'preset = "hardened"',
                    'preset = "vbs"',
                    "vps = 3",
                    "vps = 0",
                    "ram_mib = 1.5",
                    '[components."securekernel.exe"]',
                    '[revocation."hvix64.exe"]',
                    "[legacy]",
                    'version = "10.0.1"',
                    "svn = 2",
                    "min_svn = 9",
                    "tampered = true",
                    "securecall_double_fetch = true",
                    "x = 1",
                    "[[components]]",
                    "= =",
                    '"',
                ]
            ),
            max_size=8,
        ).map("\n".join),
    )
)
def test_load_of_random_text_raises_only_policy_error(text: str) -> None:
    _load_text(text)


def test_a_custom_policy_says_what_it_is_and_what_it_changed(tmp_path: Path) -> None:
    """Issue 12: the banner showed the preset's description for a file that changed it."""
    from vbsim.policy import load, warnings

    path = tmp_path / "mine.toml"
    path.write_text('preset = "hardened"\nhvpt = false\n')
    policy = load(path)
    assert policy.name == "custom policy (from mine.toml), based on hardened"
    assert policy.description == "changes: hvpt: true -> false"
    path.write_text('preset = "vbs-off"\nhvci = true\n')
    assert warnings(load(path)) == ["hvci = true cannot take effect with vbs = false"]


def test_a_policy_file_that_is_not_one_is_refused(tmp_path: Path) -> None:
    from vbsim.policy import MAX_POLICY_FILE, PolicyError, load

    with pytest.raises(PolicyError, match="not a regular file"):
        load("/dev/zero")
    big = tmp_path / "big.toml"
    big.write_text("#" * (MAX_POLICY_FILE + 1))
    with pytest.raises(PolicyError, match="larger than"):
        load(big)


def test_user_text_in_a_policy_prints_as_itself(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from vbsim.boot.report import boot_report, print_boot_report
    from vbsim.policy import load

    path = tmp_path / "odd.toml"
    path.write_text('preset = "vbs-off"\ndescription = "closing [/] tag \\u001b[31m"\n')
    out = io.StringIO()
    print_boot_report(boot_report(load(path)), Console(file=out, width=160))
    first = out.getvalue().splitlines()[0]
    assert "closing [/] tag \\x1b[31m" in first and "\x1b" not in out.getvalue()
