"""The report's pictures, drawn as SVG trees with :mod:`vbsim.report.svg`.

- :func:`machine_svg`: the four areas and the hypervisor, with what runs in each;
- :func:`memory_svg`: guest-physical memory as VTL0's SLAT lets it use it (rights) and who owns
  it (the frame allocator's labels);
- :func:`sequence_svg`: one run's sequence diagram;
- :func:`boot_svg`: the boot chain as a timeline.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from vbsim.boot.memory_map import MemoryRun
from vbsim.report.data import ChainStep, PresetData
from vbsim.report.sequence import LANE_TITLES, Diagram, Step
from vbsim.report.svg import (
    Node,
    circle,
    clip,
    el,
    group,
    line,
    mono_width,
    path,
    rect,
    sans_width,
    svg,
    text,
    text_width,
    title,
)

# -- palettes --------------------------------------------------------------------------------------
#: VTL0's SLAT rights (HV_MAP_GPA_*): dark = VTL0 cannot touch it; blue = read-only; green =
#: executable and not writable (W^X code); yellow/orange/red = writable, the more so the hotter.
RIGHTS_COLOURS = {
    "none": "#3f3f46",
    "R": "#6baed6",
    "R+KX": "#31a354",
    "R+UX": "#a1d99b",
    "R+KX+UX": "#74c476",
    "RW": "#fee08b",
    "RW+UX": "#fdae61",
    "RW+KX": "#e34a33",
    "RW+KX+UX": "#f46d43",
}
RIGHTS_MEANING = {
    "none": "VTL0 has no access (protected by VTL1)",
    "R": "read-only",
    "R+KX": "read + kernel execute (W^X code)",
    "R+UX": "read + user execute",
    "R+KX+UX": "read + execute, not writable (W^X code)",
    "RW": "read/write, never executable",
    "RW+UX": "read/write, user execute only (HVCI: no kernel execute)",
    "RW+KX": "read/write/kernel execute",
    "RW+KX+UX": "read/write/execute: no SLAT restriction",
}

#: What an owner label (from the frame allocator) is, and its colour.
ROLE_COLOURS = {
    "Secure Kernel": "#6a3d9a",
    "trustlet (IUM)": "#b084cc",
    "IUM pages from NT": "#d4b9e6",
    "HLAT tables (HVPT)": "#e7298a",
    "NT kernel": "#1f78b4",
    "NT pool": "#a6cee3",
    "KDP / secure pool": "#b15928",
    "image section": "#8dd3c7",
    "process": "#fb9a99",
    "driver": "#e31a1c",
    "attacker": "#ff7f00",
    "unused": "#d9d9d9",
    "free": "#f2f2f2",
    "other": "#969696",
}


def role(owner: str) -> str:
    """The kind of owner an allocator label names."""
    if owner == "securekernel.ium":
        return "trustlet (IUM)"
    if owner == "securekernel.hlat":
        return "HLAT tables (HVPT)"
    if owner.startswith("securekernel"):
        return "Secure Kernel"
    if owner == "nt.ium":
        return "IUM pages from NT"
    if owner in ("nt.securepool",) or "kdp" in owner:
        return "KDP / secure pool"
    if owner.startswith("nt.pool"):
        return "NT pool"
    if owner.startswith("ntoskrnl") or owner.startswith("nt."):
        return "NT kernel"
    if owner.startswith("section:"):
        return "image section"
    if owner.startswith("process:"):
        return "process"
    if owner.startswith("driver:"):
        return "driver"
    if owner in ("attacker", "unused", "free"):
        return owner
    return "other"


def _hashed_colour(key: str) -> str:
    hue = zlib.crc32(key.encode()) % 360
    return f"hsl({hue},45%,65%)"


def rights_colour(rights: str) -> str:
    return RIGHTS_COLOURS.get(rights) or _hashed_colour(rights)


def role_colour(name: str) -> str:
    return ROLE_COLOURS.get(name) or _hashed_colour(name)


def _ink(fill: str) -> str:
    """Black or white text, whichever reads on ``fill``."""
    if fill.startswith("#") and len(fill) == 7:
        r, g, b = (int(fill[i : i + 2], 16) for i in (1, 3, 5))
        return "#fff" if 0.299 * r + 0.587 * g + 0.114 * b < 140 else "#111"
    return "#111"


def size_text(byte_count: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if byte_count >= 1 << shift:
            value = byte_count / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{byte_count} B"


# -- the machine ---------------------------------------------------------------------------------
@dataclass
class Chip:
    label: str
    kind: str  # css class suffix: proc, trustlet, nt, driver, sk, feat, off
    tip: str = ""


def _chips(
    chips: Iterable[Chip], x: float, y: float, width: float, size: float = 11.0
) -> tuple[list[Node], float]:
    """Lay chips out left to right, wrapping; returns the nodes and the height used."""
    nodes: list[Node] = []
    cx, cy, row = x, y, 20.0
    for chip in chips:
        label = clip(chip.label, width - 12, size)
        w = text_width(label, size) + 12
        if cx + w > x + width and cx > x:
            cx, cy = x, cy + row + 4
        nodes.append(
            group(
                title(chip.tip or chip.label),
                rect(cx, cy, w, row, rx=4, class_=f"chip {chip.kind}"),
                text(cx + 6, cy + 14, label, class_="chipt"),
            )
        )
        cx += w + 5
    return nodes, (cy - y + row) if nodes else 0.0


def _features(p: PresetData) -> list[Chip]:
    policy = p.policy
    chips = [Chip("securekernel.exe", "sk", "The Secure Kernel (VTL1 ring 0)")]
    if policy.hvci:
        chips.append(Chip("HVCI / SKCI", "feat", "Hypervisor-protected code integrity"))
    if policy.kdp:
        chips.append(Chip("KDP", "feat", "Kernel Data Protection"))
    if policy.hvpt:
        chips.append(Chip("HVPT / HLAT", "feat", "Hypervisor-enforced paging translation"))
    chips.append(Chip("HyperGuard", "feat", "Secure intercepts on CR/MSR/IDT writes"))
    if policy.legacy.unchecked_securecall_params or policy.legacy.securecall_double_fetch:
        chips.append(Chip("pre-2020 secure calls", "bad", "CVE-2020-0917/0918 era checks"))
    return chips


#: Font size (px) of the machine card's hardware line (``.machine .hwt`` in the CSS).
HW_TEXT_SIZE = 11.0


def machine_svg(p: PresetData) -> Node:
    width, box_w, gap = 640.0, 270.0, 80.0
    left, right = 10.0, 10.0 + box_w + gap
    vbs = p.vbs_running
    policy = p.policy
    user0 = [
        Chip(f"{proc.name} ({proc.pid})", "proc", f"pid {proc.pid}, user {proc.user}")
        for proc in p.processes
        if proc.trustlet_id is None and proc.pid != 4
    ]
    kernel0 = [Chip("ntoskrnl.exe", "nt", "The NT kernel (VTL0 ring 0)")]
    kernel0 += (
        [Chip("System (4)", "nt", "The System process")]
        if any(proc.pid == 4 for proc in p.processes)
        else []
    )
    kernel0 += [Chip(name, "driver", f"driver {name}") for name in p.drivers]
    user1 = [
        Chip(
            f"{proc.name} (trustlet {proc.trustlet_id})",
            "trustlet",
            f"pid {proc.pid}, trustlet ID {proc.trustlet_id}"
            + (", Credential Guard" if proc.name.lower() == "lsaiso.exe" else ""),
        )
        for proc in p.trustlets
    ]
    kernel1 = _features(p) if vbs else []
    areas = [
        ("VTL0 user mode (ring 3)", left, user0, "a-u0", True),
        ("VTL1 user mode: IUM (ring 3)", right, user1, "a-u1", vbs),
        ("VTL0 kernel: NT (ring 0)", left, kernel0, "a-k0", True),
        ("VTL1 kernel: Secure Kernel (ring 0)", right, kernel1, "a-k1", vbs),
    ]
    # Lay out chips first to know each row's height.
    laid = [_chips(chips, x + 8, 0, box_w - 16) for _, x, chips, _, _ in areas]
    top = 30.0
    user_h = max(64.0, 32 + max(laid[0][1], laid[1][1]) + 8)
    kernel_h = max(64.0, 32 + max(laid[2][1], laid[3][1]) + 8)
    kernel_y = top + user_h + 34
    hv_y = kernel_y + kernel_h + 16
    hw_y = hv_y + 44
    height = hw_y + 30
    nodes: list[Node | None] = [
        text(left + box_w / 2, 18, "VTL0: normal world", class_="colh"),
        text(right + box_w / 2, 18, "VTL1: secure world", class_="colh"),
    ]
    for index, (name, x, chips, css, present) in enumerate(areas):
        y = top if index < 2 else kernel_y
        h = user_h if index < 2 else kernel_h
        css_class = f"area {css}" if present else "area absent"
        nodes.append(rect(x, y, box_w, h, rx=8, class_=css_class))
        nodes.append(text(x + 10, y + 18, name, class_="areah"))
        if not present:
            nodes.append(text(x + box_w / 2, y + h / 2 + 10, "not present (no VTL1)", class_="na"))
            continue
        chip_nodes, _ = laid[index]
        if not chips:
            nodes.append(text(x + 10, y + 40, "(none running)", class_="na l"))
        nodes.append(group(*chip_nodes, transform=f"translate(0,{y + 28:.0f})"))
    # Gates: syscall between user and kernel; secure call / normal call through the hypervisor.
    for x, present in ((left, True), (right, vbs)):
        if not present:
            continue
        cx = x + box_w / 2
        nodes.append(
            line(
                cx,
                top + user_h + 4,
                cx,
                kernel_y - 4,
                class_="gate",
                marker_end="url(#ah)",
                marker_start="url(#ah)",
            )
        )
        nodes.append(text(cx + 8, top + user_h + 21, "system call", class_="gatet"))
    if vbs:
        y = kernel_y + kernel_h / 2
        nodes.append(
            line(left + box_w + 4, y - 8, right - 4, y - 8, class_="gate", marker_end="url(#ah)")
        )
        nodes.append(text(left + box_w + gap / 2, y - 13, "secure call", class_="gatet c"))
        nodes.append(
            line(right - 4, y + 8, left + box_w + 4, y + 8, class_="gate", marker_end="url(#ah)")
        )
        nodes.append(text(left + box_w + gap / 2, y + 22, "normal call", class_="gatet c"))
        nodes.append(text(left + box_w + gap / 2, y + 3, "VTL call", class_="gatet c s"))
        # User-to-user: no path.
        uy = top + user_h / 2
        nodes.append(text(left + box_w + gap / 2, uy + 4, "✗ no path", class_="gatet c no"))
    hv_text = (
        "Hyper-V hypervisor (hvix64.exe): VTLs, SLAT per VTL"
        + (", MBEC" if policy.mbec else "")
        + (" (emulated: restricted user mode)" if policy.hvci and not policy.mbec else "")
        if vbs
        else "no hypervisor: NT runs directly on the hardware"
    )
    nodes.append(rect(left, hv_y, width - 20, 32, rx=6, class_="hv" if vbs else "hv off"))
    nodes.append(text(width / 2, hv_y + 21, hv_text, class_="hvt"))
    iommu = "IOMMU: Kernel DMA Protection" if policy.kernel_dma_protection else "IOMMU off"
    boot = []
    if policy.secure_boot:
        boot.append("Secure Boot")
    if policy.uefi_lock:
        boot.append("UEFI lock")
    if policy.mandatory:
        boot.append("Mandatory")
    if policy.revocation:
        boot.append("SkuSiPolicy")
    hardware = f"hardware: {policy.vps} VP(s) · {size_text(p.ram_bytes)} RAM · {iommu}"
    firmware = "firmware: " + (", ".join(boot) or "no Secure Boot")
    one_line = f"{hardware} · {firmware}"
    if sans_width(one_line, HW_TEXT_SIZE) <= width - 30:
        nodes.append(text(width / 2, hw_y + 8, one_line, class_="hwt"))
    else:  # too wide for the card (hardened names five protections): two lines, nothing cut
        nodes.append(text(width / 2, hw_y + 4, hardware, class_="hwt"))
        nodes.append(text(width / 2, hw_y + 18, firmware, class_="hwt"))
    if p.halted:
        nodes.append(rect(20, height / 2 - 20, width - 40, 36, rx=6, class_="halt"))
        nodes.append(text(width / 2, height / 2 + 3, f"boot halted: {p.halted}", class_="halt-t"))
    return svg(
        width,
        height,
        *nodes,
        class_="machine",
        role="img",
        aria_label=f"the machine under {p.name}",
    )


# -- memory --------------------------------------------------------------------------------------
MEMORY_WIDTH = 1320.0
_MIN_RUN = 7.0
#: Font sizes (px) of the run labels and the GPA labels (``.memory .rt`` / ``.gpa`` in the CSS).
RUN_LABEL_SIZE = 10.0
GPA_SIZE = 9.5
_LABEL_PAD = 8.0


def _label_need(run: MemoryRun) -> float:
    """The width a run needs so its rights, its owner and its first GPA fit inside it."""
    return (
        max(
            sans_width(run.rights_text, RUN_LABEL_SIZE),
            sans_width(run.owner, RUN_LABEL_SIZE),
            mono_width(f"0x{run.first_gpa:x}", GPA_SIZE),
        )
        + _LABEL_PAD
    )


def _widths(runs: list[MemoryRun], width: float) -> list[float]:
    """Each run as wide as its labels need, and the room left shared by log2 of its size (so a
    bigger run is wider); if the labels cannot all fit, the smallest runs give theirs up (their
    tooltip and the table keep them) and are at least ``_MIN_RUN`` px."""
    if not runs:
        return []
    need = [_label_need(run) for run in runs]
    labelled = set(range(len(runs)))
    for index in sorted(range(len(runs)), key=lambda i: (runs[i].pages, -i)):
        if sum(need[i] if i in labelled else _MIN_RUN for i in range(len(runs))) <= width:
            break
        labelled.discard(index)
    base = [need[i] if i in labelled else _MIN_RUN for i in range(len(runs))]
    weights = [1.0 + math.log2(run.pages) for run in runs]
    spare = max(width - sum(base), 0.0)
    total = sum(weights)
    return [b + spare * w / total for b, w in zip(base, weights, strict=True)]


def memory_svg(p: PresetData) -> Node:
    runs = p.memory
    label_w = 92.0
    strip = MEMORY_WIDTH - label_w - 4
    nodes: list[Node | None] = []
    # To scale: where the allocated part sits in all of RAM.
    total_pages = max(p.ram_bytes >> 12, 1)
    used_pages = sum(r.pages for r in runs if r.owner != "free")
    nodes.append(text(0, 12, "to scale", class_="ml"))
    scale = strip / total_pages
    x = label_w
    for run in runs:
        w = run.pages * scale
        nodes.append(rect(x, 3, max(w, 0.6), 12, fill=rights_colour(run.rights_text), class_="run"))
        x += w
    used_w = max(used_pages * scale, 1.0)
    nodes.append(path(f"M{label_w:.1f} 17v5h{used_w:.1f}v-5", class_="tick"))
    nodes.append(
        text(
            label_w,
            30,
            f"▲ allocated: {used_pages} pages ({size_text(used_pages << 12)}) of "
            f"{size_text(p.ram_bytes)}, the rest is free. Below: every run, as wide as its labels "
            "and growing with log(size), labelled with its first GPA.",
            class_="mnote",
        )
    )
    widths = _widths(runs, strip)
    y_r, h_r, y_o, h_o = 40.0, 30.0, 72.0, 20.0
    nodes.append(text(0, y_r + 19, "VTL0 rights", class_="ml"))
    nodes.append(text(0, y_o + 14, "owner", class_="ml"))
    x = label_w
    # GPA labels in two lanes: one that would touch the previous label in its lane drops to
    # the other lane (with a longer tick); with neither free it is left to the tooltip.
    lane_end = [-1e9, -1e9]
    for run, w in zip(runs, widths, strict=True):
        fill = rights_colour(run.rights_text)
        kind = role(run.owner)
        ofill = role_colour(kind)
        end = run.first_gpa + run.pages * 4096 - 1
        tip = (
            f"GPA 0x{run.first_gpa:x}-0x{end:x}: {run.pages} page(s), "
            f"{size_text(run.pages << 12)}\n"
            f"VTL0 rights: {run.rights_text} ({RIGHTS_MEANING.get(run.rights_text, '')})\n"
            f"owner: {run.owner} ({kind})"
        )
        cells: list[Node | None] = [
            title(tip),
            rect(x, y_r, w, h_r, fill=fill, class_="run"),
            rect(x, y_o, w, h_o, fill=ofill, class_="run"),
        ]
        room = w - _LABEL_PAD
        if sans_width(run.rights_text, RUN_LABEL_SIZE) <= room:
            cells.append(text(x + w / 2, y_r + 19, run.rights_text, fill=_ink(fill), class_="rt"))
        if sans_width(run.owner, RUN_LABEL_SIZE) <= room:
            cells.append(text(x + w / 2, y_o + 14, run.owner, fill=_ink(ofill), class_="rt"))
        gpa = f"0x{run.first_gpa:x}"
        gpa_w = mono_width(gpa, GPA_SIZE)
        for lane in (0, 1):
            if x >= lane_end[lane] + 6:
                drop = 13.0 * lane  # more than a GPA label's box is tall: lanes never touch
                cells.append(line(x, y_o + h_o, x, y_o + h_o + 6 + drop, class_="tick"))
                cells.append(text(x + 1, y_o + h_o + 16 + drop, gpa, class_="gpa"))
                # the estimate is of a generic monospace face: leave a fifth more for the one
                # the browser picks (tests/report measures the rendered labels)
                lane_end[lane] = x + 1 + gpa_w * 1.2
                break
        nodes.append(group(*cells))
        x += w
    return svg(
        MEMORY_WIDTH,
        128,
        *nodes,
        class_="memory",
        role="img",
        aria_label=f"VTL0 memory map under {p.name}",
    )


@dataclass
class LegendItem:
    label: str
    colour: str
    meaning: str


def rights_legend(presets: Iterable[PresetData]) -> list[LegendItem]:
    seen = {run.rights_text for p in presets for run in p.memory}
    order = [r for r in RIGHTS_COLOURS if r in seen] + sorted(seen - set(RIGHTS_COLOURS))
    return [LegendItem(r, rights_colour(r), RIGHTS_MEANING.get(r, "")) for r in order]


def owner_legend(presets: Iterable[PresetData]) -> list[LegendItem]:
    seen: dict[str, set[str]] = {}
    for p in presets:
        for run in p.memory:
            seen.setdefault(role(run.owner), set()).add(run.owner)
    order = [r for r in ROLE_COLOURS if r in seen] + sorted(set(seen) - set(ROLE_COLOURS))
    return [LegendItem(r, role_colour(r), ", ".join(sorted(seen[r]))) for r in order]


# -- sequence diagrams ---------------------------------------------------------------------------
LANE_W = 150.0  # at most; narrower when many lifelines must fit the page
SEQ_WIDTH = 1290.0
GUTTER = 46.0
MARGIN = 118.0  # right of the lifelines: the deciding-check tag and repeat brackets
ROW_H = 22.0
HEAD_H = 44.0
LABEL_SIZE = 10.5  # px, the arrows' labels (.seq .lb in the page's CSS)


def _lane_class(name: str) -> str:
    return f"lh l-{name.lower()}"


def sequence_svg(d: Diagram) -> Node:
    lane_w = min(LANE_W, (SEQ_WIDTH - GUTTER - MARGIN) / max(len(d.lanes), 1))
    xs = {name: GUTTER + lane_w * (i + 0.5) for i, name in enumerate(d.lanes)}
    lanes_end = GUTTER + lane_w * len(d.lanes)
    width = lanes_end + MARGIN
    height = HEAD_H + ROW_H * (len(d.steps) + 0.5) + 8
    nodes: list[Node | None] = []
    for name, x in xs.items():
        nodes.append(rect(x - lane_w / 2 + 6, 4, lane_w - 12, 28, rx=5, class_=_lane_class(name)))
        nodes.append(text(x, 22, LANE_TITLES[name], class_="lt"))
        nodes.append(line(x, 32, x, height - 4, class_="ll"))
    hv = xs.get("HV")
    for index, step in enumerate(d.steps):
        y = HEAD_H + ROW_H * (index + 0.5)
        nodes.append(_step(step, y, xs, hv, lanes_end, width))
        if step.repeat is not None:
            k, times = step.repeat
            top, bottom = y - ROW_H / 2 + 3, y + ROW_H * (k - 0.5) - 3
            bx = lanes_end + 6
            nodes.append(
                group(
                    title(f"these {k} steps ran {times} times in a row"),
                    path(f"M{bx:.0f} {top:.0f}h5V{bottom:.0f}h-5", class_="rb"),
                    text(bx + 9, (top + bottom) / 2 + 4, f"↻ ×{times}", class_="rbt"),
                )
            )
    return svg(width, height, *nodes, class_="seq", role="img", aria_label="sequence diagram")


def _step(
    step: Step, y: float, xs: dict[str, float], hv: float | None, lanes_end: float, width: float
) -> Node:
    if step.elided:
        return group(
            rect(4, y - ROW_H / 2 + 2, lanes_end - 8, ROW_H - 4, class_="gap"),
            text(lanes_end / 2, y + 4, f"⋯ {step.elided} events elided ⋯", class_="gapt"),
        )
    css = "st"
    if step.refusal:
        css += " r"
    if step.decisive:
        css += " d"
    if step.reply:
        css += " rp"
    label = step.label + (f" ×{step.count}" if step.count > 1 else "")
    if step.refusal:
        label = "✗ " + label
    children: list[Node | None] = [title(step.tip)]
    if step.decisive:
        children.append(rect(2, y - ROW_H / 2 + 1, width - 4, ROW_H - 2, rx=3, class_="dbg"))
    seq = step.seqs[0] if step.seqs else 0
    children.append(text(GUTTER - 6, y + 4, f"#{seq}", class_="sq"))
    x1, x2 = xs[step.src], xs[step.dst]
    head = "url(#ahr)" if step.refusal else "url(#ah)"
    label_w = text_width(label, LABEL_SIZE)
    if x1 == x2:
        children.append(path(f"M{x1:.0f} {y - 5:.0f}h16v9h-14", class_="ln", marker_end=head))
        if x1 + 20 + label_w <= width:
            children.append(text(x1 + 20, y + 4, label, class_="lb"))
        else:  # no room on the right: the note goes left of its lifeline
            children.append(text(x1 - 6, y + 4, label, class_="lb e"))
    else:
        direction = 1 if x2 > x1 else -1
        ly = y + 6
        children.append(line(x1, ly, x2 - 2 * direction, ly, class_="ln", marker_end=head))
        if step.via_hv and hv is not None:
            children.append(circle(hv, ly, 3.5, class_="via"))
        centre = min(max((x1 + x2) / 2, label_w / 2 + 2), width - label_w / 2 - 2)
        children.append(text(centre, y - 0.5, label, class_="lb c"))
    if step.decisive:
        children.append(text(width - 6, y + 4, "◀ deciding check", class_="dtag"))
    return group(*children, class_=css)


def _marker(marker_id: str, css: str) -> Node:
    return el(
        "marker",
        path("M0 0L8 4L0 8z", class_=css),
        id=marker_id,
        viewBox="0 0 8 8",
        refX=7,
        refY=4,
        markerWidth=7,
        markerHeight=7,
        orient="auto-start-reverse",
        markerUnits="userSpaceOnUse",
    )


def defs_svg() -> Node:
    """Shared arrowheads, referenced by every diagram (ids are unique in the page)."""
    return svg(
        0,
        0,
        el("defs", _marker("ah", "ahp"), _marker("ahr", "ahp r")),
        class_="defs",
        aria_hidden="true",
        focusable="false",
    )


# -- the boot chain ------------------------------------------------------------------------------
BOOT_REFUSED = {
    "rejected",
    "halted",
    "not-running",
    "continue-without-vbs",
    "overridden",
    "not-launched",
    "vbs-off",
    "secure-boot-off",
}


def boot_outcome_class(step: ChainStep) -> str:
    if step.outcome in ("rejected", "halted"):
        return "bad"
    if step.outcome in BOOT_REFUSED:
        return "warn"
    if step.outcome.startswith("STATUS_") and step.outcome != "STATUS_SUCCESS":
        return "bad"
    return "ok"


def _where(step: ChainStep) -> int:
    if step.vtl is None:
        return 0
    return 1 if step.vtl == 0 else 2


def _chain_label(step: ChainStep, secure_boot: bool) -> str:
    from vbsim.boot.report import step_label

    d = step.detail
    # The same name as 'vbsim boot' (never "secureboot" when Secure Boot is off).
    name = step_label(step.step, step.outcome, d, secure_boot)
    label = f"{name}: {step.outcome}"
    extra = [str(d[k]) for k in ("source", "reason", "failure") if d.get(k)]
    if d.get("version"):
        extra.insert(0, str(d["version"]).split(" ")[0])
    return label + (f" · {', '.join(extra)}" if extra else "")


def boot_svg(p: PresetData) -> Node:
    width = 430.0
    cols = (18.0, 48.0, 78.0)
    label_x = 96.0
    row = 19.0
    top = 30.0
    height = top + row * max(len(p.chain), 1) + 6
    nodes: list[Node | None] = []
    for x, name in zip(cols, ("FW", "VTL0", "VTL1"), strict=True):
        nodes.append(text(x, 14, name, class_="bh"))
        nodes.append(line(x, 20, x, height - 4, class_="bl"))
    points = []
    for index, step in enumerate(p.chain):
        y = top + row * index + row / 2
        x = cols[_where(step)]
        points.append(f"{x:.0f} {y:.0f}")
    if len(points) > 1:
        nodes.append(path("M" + "L".join(points), class_="bp"))
    for index, step in enumerate(p.chain):
        y = top + row * index + row / 2
        x = cols[_where(step)]
        css = boot_outcome_class(step)
        detail = ", ".join(f"{k}={v}" for k, v in step.detail.items() if v is not None)
        where = "firmware / loader" if step.vtl is None else f"VP{step.vp} VTL{step.vtl}"
        label = _chain_label(step, p.policy.secure_boot)
        nodes.append(
            group(
                title(f"#{step.seq} {where}: {label}; {detail}"),
                circle(x, y, 5, class_=f"bd {css}"),
                text(label_x, y + 4, clip(label, width - label_x, 10), class_=f"bt {css}"),
            )
        )
    return svg(
        width, height, *nodes, class_="boot", role="img", aria_label=f"boot chain under {p.name}"
    )
