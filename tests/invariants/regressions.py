"""Attacker programs kept for good: shrunk failures and the cases that once fooled the monitor.

Each entry replays on a freshly booted machine (``test_regressions.py``).  ``expect`` is ``"ok"``
(no violation, no escaped exception), an invariant number (that invariant must be reported: a
legacy switch reproducing a real bug), or ``"bug:KEY"`` for a model bug still open
(``vbsim.invariants.known_bugs``; the replay is a strict xfail).  To add one, paste the program
the soak or Hypothesis printed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vbsim.hv.defs import HvMsr
from vbsim.invariants.attacker import Action, Program, Ref


@dataclass(frozen=True)
class Regression:
    name: str
    preset: str
    program: Program
    expect: str | int = "ok"
    legacy: dict[str, bool] = field(default_factory=dict)
    note: str = ""


_MDL_BYTECOUNT = 0x28  # MDL.ByteCount (x64 wdm.h)

A9_TOCTOU = Program(
    "K0",
    (
        Action("securecall", (2, "CREATE_SECURE_ALLOCATION", 0, (4096,), ())),
        Action("stage_mdl", (0, 0, (Ref("pfn", "loot", 0), Ref("pfn", "loot", 1)), 64, 0, -1)),
        Action(
            "securecall",
            (
                2,
                "FILL_SECURE_ALLOCATION",
                0,
                (Ref("handle"), 0, Ref("dm", "stage", 0), Ref("pfn", "stage", 0)),
                (
                    "toctou",
                    Ref("dm", "stage", 0, _MDL_BYTECOUNT),
                    (4096 + 16).to_bytes(4, "little"),
                ),
            ),
        ),
    ),
)

A8_OVERFLOW = Program(
    "K0",
    (
        Action("securecall", (2, "CREATE_SECURE_ALLOCATION", 0, (4096,), ())),
        Action("stage_mdl", (0, 0, (Ref("pfn", "loot", 0), Ref("pfn", "loot", 1)), 24, 0, -1)),
        Action(
            "securecall",
            (
                2,
                "FILL_SECURE_ALLOCATION",
                0,
                (Ref("handle"), 4096 - 8, Ref("dm", "stage", 0), Ref("pfn", "stage", 0)),
                (),
            ),
        ),
    ),
)

A8_VTL1_MDL = Program(
    "K0",
    (
        Action("securecall", (2, "CREATE_SECURE_ALLOCATION", 0, (4096,), ())),
        Action(
            "securecall",
            (2, "FILL_SECURE_ALLOCATION", 0, (Ref("handle"), 0, 0, Ref("pfn", "trustlet", 3)), ()),
        ),
    ),
)

REGRESSIONS: list[Regression] = [
    Regression(
        "a9-toctou-defeated-by-capture",
        "hardened",
        A9_TOCTOU,
        note="the MDL's ByteCount grows while the SK waits in its normal call: captured, no harm",
    ),
    Regression(
        "a9-toctou-double-fetch",
        "hardened",
        A9_TOCTOU,
        expect=6,
        legacy={"securecall_double_fetch": True},
        note="the same program with the double-fetch switch overwrites the SK policy page",
    ),
    Regression(
        "a8-unchecked-bytecount-legacy-2019",
        "legacy-2019",
        A8_OVERFLOW,
        expect=6,
        note="CVE-2020-0917 class: the copy runs past the allocation into the SK policy page",
    ),
    Regression("a8-checked", "vbs", A8_OVERFLOW, note="the same call, refused"),
    Regression(
        "a8-unchecked-mdl-pfn-echoes-vtl1-memory",
        "legacy-2019",
        A8_VTL1_MDL,
        expect=1,
        note="found by the attacker: the unchecked SK parses a trustlet page as the MDL and "
        "sends its PFN array to NT in the normal call's registers",
    ),
    Regression("a8-mdl-pfn-checked", "vbs", A8_VTL1_MDL, note="the same call, refused"),
    Regression(
        "credential-stored-after-attach",
        "vbs",
        Program(
            "A0",
            (
                Action(
                    "alpc",
                    ("lsaiso", (1).to_bytes(4, "little") + bytes(range(32, 112)), 1),
                ),
            ),
        ),
        note="monitor bug, fixed: an OWF lsass hands LsaIso after attach came from VTL0, so "
        "VTL0 holding it is no leak",
    ),
    Regression(
        "reply-to-an-abandoned-fill-after-an-accepted-create",
        "vbs",
        Program(
            "K0",
            (
                Action("securecall", (2, "CREATE_SECURE_ALLOCATION", 0, (4096,), ())),
                Action("stage_mdl", (0, 0, (Ref("pfn", "loot", 0),), 16, 0, -1)),
                Action(
                    "securecall",
                    (
                        2,
                        "FILL_SECURE_ALLOCATION",
                        0,
                        (Ref("handle"), 0, Ref("dm", "stage", 0), Ref("pfn", "stage", 0)),
                        ("abandon",),
                    ),
                ),
                Action("securecall", (2, "CREATE_SECURE_ALLOCATION", 0, (4096,), ())),
                Action("securecall", (0x81, "FILL_SECURE_ALLOCATION", 0, (0x2000,), ())),
            ),
        ),
        note="monitor bug, fixed: the refused resumption was blamed for the accepted CREATE's "
        "arena write in between",
    ),
    Regression(
        "hypercall-page-on-sk-memory",
        "hardened",
        Program("K0", (Action("wrmsr", (int(HvMsr.HYPERCALL), Ref("gpa", "sk", 12), 1)),)),
        expect="ok",
        note="the hypervisor writes the hypercall stubs into an SK page VTL0 named",
    ),
    Regression(
        "kdp-page-handed-to-a-trustlet",
        "hardened",
        Program(
            "K0",
            (
                Action(
                    "securecall",
                    (2, "PROTECT_KERNEL_DATA_PAGE", 0, (Ref("kva", "data", 0, 0), 1, 0), ()),
                ),
                Action("trustlet", ("vmsp", (), -1, 0, (Ref("pfn", "kdp", 0),))),
            ),
        ),
        expect="ok",
        note="NT offers the SK the page it just had KDP protect; the SK clears it for vmsp",
    ),
    Regression(
        "trustlet-syscall-waits-on-a-dead-nt",
        "vbs",
        Program(
            "K0",
            (
                # NT's normal-call dispatch (found by a vbs soak, seed 5, shrunk by hand)
                Action("write", (Ref("dm", "ntcode", 0, 0xE0), b"\xff" * 8)),
                Action("fuzzlet", (1, 1, (6419, 8004331521970186627, 32, 21))),
            ),
        ),
        expect="ok",
        note="monitor bug, fixed: NT's normal-call dispatch is overwritten, so the normal call "
        "a trustlet's system call makes never returns and the SK processor block keeps naming "
        "the trustlet (invariant 6 called that an SK data change)",
    ),
    Regression(
        "sk-routine-run-from-user-mode",
        "vbs-hvci",
        Program("U0", (Action("exec", ("sk.entry", 0)),)),
        expect="ok",
        note="AssertionError escapes from the SK's GS lookup",
    ),
    Regression(
        "trustlet-resume-after-dma-wiped-the-free-list",
        "hardened",
        Program(
            "K0",
            (
                # a device writes zeros over NT's PFN list head (VTL0 memory: the IOMMU lets
                # it), then NT needs two pool pages to resume a trustlet
                Action("dma", (0, Ref("gpa", "ntpt", 39, 4088), 0x8000_0000)),
                Action("resume", (3, b"|\xfb\xcf\xdf", 1)),
            ),
        ),
        expect="ok",
        note="found by a hardened soak (10,000 programs): NoPages escaped run_trustlet; NT now "
        "fails the request with STATUS_NO_MEMORY as ExAllocatePool's callers do",
    ),
]
