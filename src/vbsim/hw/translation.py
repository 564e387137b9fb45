"""The common interface of the translation stack (in the spirit of Volatility 3's layers).

Every layer — RAM, SLAT(vtl), Paging(cr3, cpl), IOMMU(domain) — answers ``translate`` with a
:class:`Verdict` naming the mechanism that decided, and offers ``read``/``write`` that refuse
(return a verdict instead of data) when the translation is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from vbsim.hw.x86 import Access


@dataclass(slots=True)
class Verdict:
    """The result of translating one address for one kind of access.

    ``ok``: the access may proceed to ``address`` (the next layer's address space).
    ``mechanism``: the check that decided (``ram``, ``ram.unbacked``, ``slat``, ``slat.walk``,
    ``paging.p``, ``paging.rw``, ``paging.us``, ``paging.nx``, ``paging.rsvd``, ``paging.wp``,
    ``smep``, ``smap``, ``iommu`` ...).
    ``fault``: for a paging refusal, the architectural #PF error code; else 0.
    ``gpa``: for a SLAT refusal during a paging walk, the GPA of the paging-structure entry.
    """

    ok: bool
    address: int
    mechanism: str
    access: Access
    fault: int = 0
    gpa: int | None = None

    def __bool__(self) -> bool:
        return self.ok


class AccessRefused(Exception):
    """Raised by layer-level ``read``/``write`` helpers used by host-side tools (never by guest
    code paths, which receive architectural events instead)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"{verdict.access.name.lower()} refused by {verdict.mechanism}")
        self.verdict = verdict
