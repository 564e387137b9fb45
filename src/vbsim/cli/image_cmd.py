"""``vbsim image``: sign, verify and inspect PE images with the model PKI.

- ``sign FILE [-o OUT] [--profile ium|windows|codesign]`` Authenticode-signs FILE with a leaf of
  the model PKI (never a real vendor key; see :mod:`vbsim.image.pki`).  With no ``-o`` the file
  is signed in place, as ``signtool sign`` does.
- ``verify FILE [--kind KIND]`` checks the signature against the model root and the signing
  requirement of KIND (vbs-internals §3.4: trustlets need the IUM EKU at signing level 12).
  Exit status 0 when valid, 1 when not (the failed check is printed).
- ``inspect FILE`` shows any PE, real Windows binaries included: headers, sections, exports,
  the version resource, ``.tPolicy`` with every entry (§3.1), and the signer chain with each
  certificate's EKUs.

Every command takes ``--json``.  Bad input (no such file, not a PE, an unknown option value) is
one line on stderr naming what was wrong, and exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from vbsim.cli.render import console

if TYPE_CHECKING:
    from vbsim.image import CertificateInfo, ParsedImage, PolicyEntry, VerificationResult
    from vbsim.image.signing_level import SigningRequirement

# ``vbsim.image`` is imported inside the functions: it loads LIEF (~0.5 s), which ``vbsim --help``
# and the other commands should not pay for.

image_app = typer.Typer(
    help="PE images: sign with the model PKI, verify, inspect (any PE, trustlets included).",
    no_args_is_help=True,
    add_completion=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]

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
#: The model PKI's signer profiles (``vbsim.image.pki.PROFILES``; a test keeps them equal).
PROFILE_CHOICES = ("ium", "windows", "codesign")


class CliError(Exception):
    """A usage or input error: one line for the user, exit status 2."""


# -- shared helpers (also used by ``vbsim trustlet``) --------------------------------------------
def fail(message: str, as_json: bool) -> NoReturn:
    """Report an input error on one line (stderr; JSON on stdout too) and exit with status 2."""
    if as_json:
        print(json.dumps({"ok": False, "error": message}))
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"error: {message}", markup=False)
    raise typer.Exit(2)


def internal_error(error: BaseException) -> str:
    """One line for an unexpected exception (a vbsim bug, reported without a traceback)."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"vbsim internal error: {type(error).__name__}: {text}"


def read_input(path: Path, what: str = "FILE") -> bytes:
    """The bytes of ``path``; :class:`CliError` naming the problem otherwise."""
    from vbsim.image.parse import MAX_IMAGE_SIZE

    if not path.exists():
        raise CliError(f"{what} {str(path)!r}: no such file")
    if not path.is_file():
        raise CliError(f"{what} {str(path)!r}: not a regular file")
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_SIZE:
            raise CliError(f"{what} {str(path)!r}: {size} bytes is over the {MAX_IMAGE_SIZE} limit")
        return path.read_bytes()
    except OSError as error:
        raise CliError(f"{what} {str(path)!r}: cannot read it ({error.strerror})") from error


def parse_input(path: Path, data: bytes) -> ParsedImage:
    from vbsim.image import ImageFormatError, parse_image

    try:
        return parse_image(data)
    except ImageFormatError as error:
        raise CliError(f"{str(path)!r} is not a PE image vbsim can read: {error.reason}") from error


def eku_name(oid: str) -> str:
    from vbsim.image.signing_level import EKU_NAMES

    return EKU_NAMES.get(oid) or MORE_EKU_NAMES.get(oid) or oid


def _hex(value: int) -> str:
    return f"0x{value:x}"


def _section_flags(characteristics: int) -> list[str]:
    return [name for bit, name in SECTION_FLAGS if characteristics & bit]


def _requirement(kind: str | None, parsed: ParsedImage | None) -> tuple[str, SigningRequirement]:
    """The kind checked and its requirement: ``kind``, else the image's own, else Authenticode."""
    from vbsim.image import requirement_for
    from vbsim.image.signing_level import SigningRequirement

    chosen = kind or (parsed.kind.value if parsed is not None and parsed.kind else AUTHENTICODE)
    requirement = None if chosen == AUTHENTICODE else requirement_for(chosen)
    return chosen, requirement if requirement is not None else SigningRequirement()


def _trust_and_verify(
    data: bytes, parsed: ParsedImage | None, requirement: SigningRequirement
) -> VerificationResult:
    from vbsim.image import PkiError, model_pki, verify_image

    try:
        trust = model_pki().trust_store()
    except PkiError as error:
        raise CliError(str(error)) from error
    return verify_image(data, trust, requirement=requirement, parsed=parsed)


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


def _chain_from_signature(data: bytes, parsed: ParsedImage) -> list[CertificateInfo]:
    """The certificates the signature carries, signer first, following issuers upward.

    ``verify_image`` reports its chain only once the chain reaches a trusted root; for an
    untrusted root this shows what the signature itself offers (see the report's diagnosis).
    """
    from vbsim.image.authenticode import CertificateTableError, read_certificate_table
    from vbsim.image.chain import issued_by, load_certificate
    from vbsim.image.pkcs7 import MalformedSignature, decode_signed_data

    try:
        table = read_certificate_table(data, parsed)
        if table is None:
            return []
        signature = decode_signed_data(table.pkcs7)
        certs = [load_certificate(der) for der in signature.certificates]
    except (CertificateTableError, MalformedSignature, ValueError):
        return []
    current = next(
        (c for c in certs if c.info.serial == signature.signer_serial),
        None,
    )
    chain = []
    while current is not None and current not in chain:
        chain.append(current)
        parent = current
        current = next((c for c in certs if c not in chain and issued_by(parent, c)), None)
    return [link.info for link in chain]


def signature_json(data: bytes, parsed: ParsedImage | None, kind: str | None) -> dict[str, Any]:
    """Verification result plus the signer chain, as the CLI prints it."""
    from vbsim.image.verify import Failure

    checked, requirement = _requirement(kind, parsed)
    result = _trust_and_verify(data, parsed, requirement)
    chain = list(result.chain)
    untrusted = result.failure is Failure.UNTRUSTED_ROOT
    source = "verified chain"
    if not chain and parsed is not None and result.failure not in (Failure.NO_SIGNATURE, None):
        chain = _chain_from_signature(data, parsed)
        source = "certificates in the signature (no chain to a trusted root)"
    positions = []
    for index, info in enumerate(chain):
        if index == 0:
            positions.append("signer")
        elif index == len(chain) - 1 and not untrusted and info.issuer == info.subject:
            positions.append("trusted root")
        else:
            positions.append("intermediate")
    if untrusted and chain:
        positions[-1] += " (issued by an untrusted root)"
    return {
        "valid": result.ok,
        "failure": None if result.failure is None else result.failure.value,
        "detail": result.detail,
        "kind": checked,
        "required_ekus": sorted(requirement.ekus),
        "required_level": int(requirement.min_level),
        "signed": result.failure is not Failure.NO_SIGNATURE,
        "trusted_root": bool(result.chain) and not untrusted,
        "untrusted_root": untrusted,
        "digest_algorithm": result.digest_algorithm,
        "image_digest": None if result.image_digest is None else result.image_digest.hex(),
        "program_name": result.program_name,
        "signing_level": int(result.signing_level),
        "signing_level_name": result.signing_level.name,
        "effective_ekus": [{"oid": o, "name": eku_name(o)} for o in sorted(result.ekus)],
        "chain_source": source if chain else None,
        "chain": [_certificate_json(info, pos) for info, pos in zip(chain, positions, strict=True)],
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


def inspect_json(path: Path, data: bytes, parsed: ParsedImage) -> dict[str, Any]:
    from vbsim.image.checksum import pe_checksum

    computed = pe_checksum(data, parsed.checksum_offset)
    entry_export = next(
        (e for e in parsed.exports if e.rva == parsed.entry_rva and e.forwarder is None), None
    )
    routines = {e.name: e for e in parsed.exports}
    policy = parsed.policy
    return {
        "file": str(path),
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
        "signature": signature_json(data, parsed, None),
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
def print_signature(out: Console, signature: dict[str, Any]) -> None:
    if signature["valid"]:
        out.print(
            f"[bold green]signature valid[/] for kind [bold]{signature['kind']}[/]: "
            f"signing level {signature['signing_level']} ({signature['signing_level_name']})"
        )
    elif not signature["signed"]:
        out.print("[bold red]not signed[/]")
    else:
        out.print(
            f"[bold red]signature INVALID[/] for kind [bold]{signature['kind']}[/]: "
            f"failed check [bold]{signature['failure']}[/] — {signature['detail']}",
            markup=True,
        )
    if signature["image_digest"]:
        out.print(
            f"Authenticode {signature['digest_algorithm']} digest: {signature['image_digest']}",
            soft_wrap=True,
        )
    if signature["untrusted_root"]:
        out.print("[bold red]untrusted root[/]: the chain does not reach the model root")
    if not signature["chain"]:
        return
    out.print(f"[bold]signer chain[/] ({signature['chain_source']}):")
    for cert in signature["chain"]:
        ekus = (
            "(no EKU extension)"
            if cert["ekus"] is None
            else ", ".join(f"{e['name']} ({e['oid']})" for e in cert["ekus"])
        )
        ca = ", CA" if cert["is_ca"] else ""
        out.print(f"  [bold]{cert['position']}[/]: {cert['subject']}", soft_wrap=True)
        out.print(f"      issuer: {cert['issuer']}", soft_wrap=True, markup=False)
        out.print(f"      EKUs: {ekus}", soft_wrap=True, markup=False)
        out.print(
            f"      serial {cert['serial']}{ca}, valid {cert['not_before'][:10]} .. "
            f"{cert['not_after'][:10]}, sha256 {cert['sha256']}",
            soft_wrap=True,
            markup=False,
        )


def print_inspect(out: Console, report: dict[str, Any]) -> None:
    out.print(f"[bold]{report['file']}[/]: {report['size']} bytes")
    headers = Table(title="headers", show_header=False)
    headers.add_column("field", style="bold")
    headers.add_column("value", overflow="fold")
    entry = report["entry"]
    entry_text = entry["rva"]
    if entry["export"]:
        entry_text += f" (export {entry['export']})"
    if entry["guest_routine"]:
        entry_text += f" → guest routine {entry['guest_routine']}"
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
        ("kind", report["kind"] or "-"),
    ]
    for field, value in rows:
        headers.add_row(field, value)
    out.print(headers)
    sections = Table(title="sections", header_style="bold")
    for column in ("name", "VA", "virtual size", "raw offset", "raw size", "flags"):
        sections.add_column(column)
    for s in report["sections"]:
        sections.add_row(
            s["name"],
            s["virtual_address"],
            str(s["virtual_size"]),
            s["raw_offset"],
            str(s["raw_size"]),
            f"{s['characteristics']} {' '.join(s['flags'])}",
        )
    out.print(sections)
    if report["exports"]:
        exports = Table(title=f"exports of {report['export_dll_name'] or '?'}", header_style="bold")
        for column in ("ordinal", "name", "RVA", "guest routine / forwarder"):
            exports.add_column(column)
        for e in report["exports"]:
            exports.add_row(
                str(e["ordinal"]),
                e["name"] or "-",
                e["rva"],
                e["forwarder"] or e["guest_routine"] or "",
            )
        out.print(exports)
    else:
        out.print("exports: none")
    version = report["version"]
    if version is None:
        out.print("version resource: none")
    else:
        table = Table(title=f"version {version['file_version']} (svn {version['svn']})")
        table.add_column("string", style="bold")
        table.add_column("value", overflow="fold")
        for key, value in version["strings"].items():
            table.add_row(key, value)
        out.print(table)
    policy = report["tpolicy"]
    if policy is None:
        out.print("trustlet policy: none (no .tPolicy section; not a trustlet)")
    else:
        name = f" ({policy['trustlet']})" if policy["trustlet"] else ""
        out.print(
            f"[bold].tPolicy[/]: {policy['export']} at {policy['export_rva']}, Version "
            f"{policy['metadata_version']}, ApplicationId (trustlet ID) "
            f"{policy['application_id']}{name}"
        )
        table = Table(header_style="bold")
        for column in ("policy", "id", "type", "value"):
            table.add_column(column, overflow="fold")
        for item in policy["entries"]:
            table.add_row(
                item["policy"], str(item["policy_id"]), item["type"], format_policy_value(item)
            )
        out.print(table)
    print_signature(out, report["signature"])
    for warning in report["warnings"]:
        out.print(f"[yellow]warning[/]: {warning}", markup=True)


def signer_profile_ekus(profile: str) -> tuple[str, ...]:
    from vbsim.image.pki import PROFILES

    return PROFILES[profile]


def signer_pki_directory() -> Path:
    from vbsim.image import model_pki

    return model_pki().directory


# -- commands ------------------------------------------------------------------------------------
@image_app.command("sign")
def sign_command(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="The PE image to sign.", show_default=False)
    ],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Write the signed image here (default: in place)."),
    ] = None,
    profile: Annotated[
        str, typer.Option(help="Signer profile: ium, windows or codesign (model PKI).")
    ] = "ium",
    as_json: JsonOption = False,
) -> None:
    """Authenticode-sign FILE with the model PKI (never a real vendor key)."""
    try:
        if profile not in PROFILE_CHOICES:
            raise CliError(f"unknown --profile {profile!r} (known: {', '.join(PROFILE_CHOICES)})")
        from vbsim.image import ImageFormatError, PkiError, model_pki, sign_image

        data = read_input(file)
        parse_input(file, data)
        try:
            signer = model_pki().signer(profile)
        except PkiError as error:
            raise CliError(str(error)) from error
        try:
            signed = sign_image(data, signer)
        except (ImageFormatError, ValueError) as error:
            raise CliError(f"{str(file)!r} cannot be signed: {error}") from error
        target = output if output is not None else file
        try:
            target.write_bytes(signed)
        except OSError as error:
            raise CliError(f"cannot write {str(target)!r}: {error.strerror}") from error
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
        print(json.dumps(report))
        return
    out = console()
    out.print(f"signed [bold]{file}[/] → [bold]{target}[/] ({len(signed)} bytes)")
    ekus = ", ".join(e["name"] for e in signer_ekus)
    out.print(f"profile {profile}: {report['signer']} (EKUs: {ekus})")
    out.print(f"model PKI: {report['pki']}")
    print_signature(out, signature)


@image_app.command("verify")
def verify_command(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="The PE image to verify.", show_default=False)
    ],
    kind: Annotated[
        str | None,
        typer.Option(
            help="Check the requirement of this kind: "
            + ", ".join(KIND_CHOICES)
            + " (default: the image's own kind, else authenticode)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Verify FILE's Authenticode signature against the model root; exit 1 if invalid."""
    try:
        if kind is not None and kind not in KIND_CHOICES:
            raise CliError(f"unknown --kind {kind!r} (known: {', '.join(KIND_CHOICES)})")
        data = read_input(file)
        from vbsim.image import ImageFormatError, parse_image

        try:
            parsed: ParsedImage | None = parse_image(data)
        except ImageFormatError:
            parsed = None  # verify_image reports it as the failed check "malformed-image"
        signature = signature_json(data, parsed, kind)
    except CliError as error:
        fail(str(error), as_json)
    except Exception as error:  # never a traceback: a vbsim bug is reported on one line too
        fail(internal_error(error), as_json)
    if as_json:
        print(json.dumps({"ok": True, "file": str(file), **signature}))
    else:
        print_signature(console(), signature)
    if not signature["valid"]:
        raise typer.Exit(1)


@image_app.command("inspect")
def inspect_command(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Any PE image.", show_default=False)],
    as_json: JsonOption = False,
) -> None:
    """Show FILE's headers, sections, exports, version, .tPolicy and signer chain."""
    try:
        data = read_input(file)
        parsed = parse_input(file, data)
        register_known_routines()
        report = inspect_json(file, data, parsed)
    except CliError as error:
        fail(str(error), as_json)
    except Exception as error:  # never a traceback: a vbsim bug is reported on one line too
        fail(internal_error(error), as_json)
    if as_json:
        print(json.dumps({"ok": True, **report}))
    else:
        print_inspect(console(), report)
