"""SKCI admission of a trustlet image (vbs-internals §3.1, §3.4, §3.6, Appendix A item 6).

The checks run in this order, each one named in the trace (``skci.<check>``):
``format`` (a PE the SK can parse) → ``tpolicy`` (a ``.tPolicy`` section with exactly
IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ) → ``policy-export`` (``s_IumPolicyMetadata``
exported into it, Version 1) → ``trustlet-id`` (the requested ID equals the signed ApplicationId) →
``signature`` (Authenticode valid, chained to the root SKCI's anchor record in SK memory names,
with the EKUs and signing level that record requires of trustlets: IUM + WSCV at level 12) →
``revocation`` (not below the SkuSiPolicy floor) → ``allow-list`` (the ID is one the SK knows).

Statuses returned to NT (the reference marks them [U]; these are the model's choices):
a bad signature or digest → STATUS_INVALID_IMAGE_HASH (McGarr saw it for non-HVCI images);
not a trustlet (format, .tPolicy, export) → STATUS_INVALID_IMAGE_FORMAT; revoked →
STATUS_IMAGE_CERT_REVOKED; ID mismatch or not on the allow-list → STATUS_ACCESS_DENIED.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from vbsim.image import ImageFormatError, ParsedImage, RevocationPolicy, anchors, parse_image
from vbsim.image.anchors import Anchor
from vbsim.image.policy import POLICY_EXPORT_NAME
from vbsim.ntstatus import NtStatus
from vbsim.sk.ium.checks import CHECKS

#: IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ (vbs-internals §3.1).
TPOLICY_CHARACTERISTICS = 0x0000_0040 | 0x4000_0000
#: Trustlet IDs the Secure Kernel knows (vbs-internals §3.2 rows with a confirmed ID): what the
#: loader writes into the SK's allow-list (``layouts.AllowList``); SKCI decides from that copy.
ALLOWED_IDS = frozenset({1, 2, 3, 4, 5})


@dataclass(frozen=True)
class Admission:
    status: int
    check: str
    detail: str
    image: ParsedImage | None = None

    @property
    def passed(self) -> tuple[str, ...]:
        """The checks that passed before the deciding one (all of them when admitted)."""
        if self.ok:
            return CHECKS
        return CHECKS[: CHECKS.index(self.check)] if self.check in CHECKS else ()

    @property
    def ok(self) -> bool:
        return self.status == NtStatus.SUCCESS


def admit(
    data: bytes,
    requested_id: int,
    revocation: RevocationPolicy | None,
    allowed: frozenset[int] | set[int] = ALLOWED_IDS,
    *,
    anchor: Anchor,
    at: dt.datetime | None = None,
) -> Admission:
    """SKCI's checks on ``data``; ``revocation``, ``allowed``, ``anchor`` (the trusted root
    and the trustlet requirement) and ``at`` (the SK's time) are what the caller just read from
    SK memory."""
    try:
        parsed = parse_image(data)
    except ImageFormatError as error:
        return Admission(NtStatus.INVALID_IMAGE_FORMAT, "format", str(error))
    section = parsed.section(".tPolicy")
    if section is None:
        return Admission(NtStatus.INVALID_IMAGE_FORMAT, "tpolicy", "no .tPolicy section", parsed)
    if section.characteristics != TPOLICY_CHARACTERISTICS:
        return Admission(
            NtStatus.INVALID_IMAGE_FORMAT,
            "tpolicy",
            f".tPolicy characteristics 0x{section.characteristics:08x}",
            parsed,
        )
    if parsed.policy is None or parsed.policy_export != POLICY_EXPORT_NAME:
        return Admission(
            NtStatus.INVALID_IMAGE_FORMAT,
            "policy-export",
            f"{POLICY_EXPORT_NAME} not exported into .tPolicy",
            parsed,
        )
    if parsed.policy.version != 1:
        return Admission(
            NtStatus.INVALID_IMAGE_FORMAT,
            "policy-export",
            f"policy Version {parsed.policy.version}",
            parsed,
        )
    if parsed.policy.application_id != requested_id:
        return Admission(
            NtStatus.ACCESS_DENIED,
            "trustlet-id",
            f"requested {requested_id}, signed {parsed.policy.application_id}",
            parsed,
        )
    result = anchors.verify(data, anchor, revocation=revocation, parsed=parsed, at=at)
    if not result.ok:
        if result.revocation is not None and result.revocation.revoked:
            return Admission(NtStatus.IMAGE_CERT_REVOKED, "revocation", result.detail, parsed)
        return Admission(
            NtStatus.INVALID_IMAGE_HASH, "signature", f"{result.failure}: {result.detail}", parsed
        )
    if requested_id not in allowed:
        return Admission(
            NtStatus.ACCESS_DENIED, "allow-list", f"trustlet ID {requested_id} unknown", parsed
        )
    return Admission(NtStatus.SUCCESS, "admitted", "all checks passed", parsed)
