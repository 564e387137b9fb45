"""From an attack's trace to a sequence diagram: lifelines, and one arrow (or note) per event.

Each event is placed by who acted (its VTL and CPL) and what happened (its kind):

- ``syscall`` (``lstar``) goes from a VTL's user mode to its kernel, ``sysret`` back;
- ``ium-syscall`` from IUM to the Secure Kernel;
- ``vtl`` (VTL call / return / entry) and ``intercept`` cross the hypervisor;
- ``hypercall`` and the hypercall-backed kinds (``register``, ``slat``, ``vsm``) go to it;
- ``securecall`` goes from the VTL0 kernel to the Secure Kernel (its status comes back);
  ``normalcall`` from the Secure Kernel to NT;
- a memory ``access`` / ``fetch`` goes to memory, ``dma`` from a device to memory, and an
  ``iommu-fault`` from the hypervisor to the VTL it is reported to;
- everything else is a note on the actor's own lifeline.

The flood of allowed memory accesses is left out: denied ones stay, and so do the attacker's own
(a run of them is one arrow listing the addresses).  A bare VTL switch and the
secure call it carries are drawn as one arrow through the hypervisor; identical consecutive
events as one arrow ``×N``.  The deciding check (the run's mechanism: the first event that
refused what the verdict names) is marked.  Long traces keep their head, the neighbourhood of the
deciding event and their tail, with a note of what was elided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from vbsim.attacks.verdict import deciding_mechanism
from vbsim.trace import Event

#: Lifelines, left to right.  The five core ones are always drawn; the others when used.
LANES = ("firmware", "device", "memory", "U0", "K0", "HV", "SK", "IUM")
CORE_LANES = ("U0", "K0", "HV", "SK", "IUM")
LANE_TITLES = {
    "firmware": "firmware / loader",
    "device": "device (DMA)",
    "memory": "memory",
    "U0": "VTL0 user",
    "K0": "VTL0 kernel (NT)",
    "HV": "hypervisor",
    "SK": "Secure Kernel",
    "IUM": "IUM (VTL1 user)",
}
DEFAULT_CAP = 150


@dataclass
class Step:
    src: str
    dst: str
    label: str
    #: What this event refused, as the verdict would name it ("" when it refused nothing).
    refusal: str = ""
    via_hv: bool = False
    reply: bool = False
    #: A bare VTL switch (merged into the call or reply it carries).
    transition: bool = False
    seqs: list[int] = field(default_factory=list)
    tip: str = ""
    count: int = 1
    decisive: bool = False
    #: > 0: not a step but a gap of this many elided events.
    elided: int = 0
    #: (k, n): this step starts a block of k steps that ran n times in a row (drawn once).
    repeat: tuple[int, int] | None = None
    #: Allowed memory accesses of one kind in a row are one arrow listing their addresses.
    group: str = ""
    addresses: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str, str, bool, bool]:
        return (self.src, self.dst, self.label, self.refusal, self.via_hv, self.reply)


@dataclass
class Diagram:
    lanes: list[str]
    steps: list[Step]
    #: Events after the attack started, and how many of them are drawn (allowed memory accesses
    #: are never drawn; a long trace is cut to the cap).
    events: int
    filtered: int
    elided: int
    decisive_seq: int | None
    note: str = ""


def lane(vtl: int | None, cpl: int | None) -> str:
    if vtl is None:
        return "firmware"
    user = cpl == 3
    if vtl == 0:
        return "U0" if user else "K0"
    return "IUM" if user else "SK"


def _num(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return str(value)
    return f"0x{value:x}" if value >= 0x10000 else str(value)


def tooltip(event: Event) -> str:
    parts = [f"#{event.seq} {event.kind}/{event.mechanism} → {event.outcome}"]
    where = "firmware" if event.vtl is None else f"VTL{event.vtl} CPL{event.cpl}"
    parts.append(f"{where}{', ' + event.actor if event.actor else ''}")
    details = ", ".join(f"{k}={_num(v)}" for k, v in event.detail.items() if v is not None)
    if details:
        parts.append(details)
    text = "; ".join(parts)
    return text if len(text) <= 240 else text[:239] + "…"


def _status(outcome: str, ok: tuple[str, ...] = ("success", "STATUS_SUCCESS")) -> str:
    return "" if outcome in ok else f" → {outcome}"


def place(event: Event) -> Step:
    """Where an event goes and what its arrow says."""
    kind, mech, outcome, d = event.kind, event.mechanism, event.outcome, event.detail
    me = lane(event.vtl, event.cpl)
    if event.vtl is None and "device" in d:
        me = "device"
    kernel = lane(event.vtl, 0) if event.vtl is not None else me
    user = lane(event.vtl, 3) if event.vtl is not None else me
    if kind == "syscall":
        if mech == "lstar":
            return Step(user, kernel, f"syscall #{_num(d.get('number', '?'))}")
        if mech == "sysret":
            status = d.get("status", 0)
            text = "sysret" + (f" ({_num(status)})" if status not in (0, None) else "")
            return Step(kernel, user, text, reply=True)
        service = d.get("service", "?")
        name = service if service != "?" else f"#{_num(d.get('number', '?'))}"
        return Step(kernel, kernel, f"{name}{_status(outcome)}")
    if kind == "ium-syscall":
        return Step("IUM", "SK", f"secure syscall {d.get('service', '?')}{_status(outcome)}")
    if kind == "vtl":
        names = {"vtl-call": "VTL call", "vtl-return": "VTL return", "vtl-entry": "VTL entry"}
        label = names.get(mech, mech)
        if mech == "vtl-entry" and d.get("reason"):
            label += f" ({d['reason']})"
        if "from_vtl" in d and "to_vtl" in d and outcome == "switched":
            src = lane(int(d["from_vtl"]), 0)
            dst = lane(int(d["to_vtl"]), event.cpl if event.cpl is not None else 0)
            return Step(src, dst, label, via_hv=True, transition=True, reply=mech == "vtl-return")
        return Step(me, "HV", f"{label}{_status(outcome, ('switched',))}")
    if kind == "intercept":
        if event.vtl == 0:
            return Step(me, "SK", f"intercept: {d.get('what', mech)}", via_hv=True)
        return Step(me, me, f"{mech} intercept: {outcome}")
    if kind == "hypercall":
        return Step(me, "HV", f"hypercall {d.get('call', '?')}{_status(outcome)}")
    if kind == "register":
        return Step(me, "HV", f"set {d.get('register', 'register')}{_status(outcome)}")
    if kind == "slat":
        rights = d.get("rights")
        pages = d.get("pages", "?")
        what = f" {rights}, {pages} page{'' if pages == 1 else 's'}" if rights is not None else ""
        return Step(me, "HV", f"{mech}{what}{_status(outcome, ('changed', 'success'))}")
    if kind == "vsm":
        return Step(me, "HV", f"{mech}: {outcome}")
    if kind == "securecall":
        if mech == "dispatch" and outcome == "entered":
            return Step("K0", "SK", f"secure call {d.get('service', _num(d.get('code', '?')))}")
        if mech == "dispatch":
            return Step("SK", "K0", outcome, reply=True)
        code = f" (code {_num(d['code'])})" if d.get("code") is not None else ""
        return Step("SK", "SK", f"{mech}: {outcome}{code}")
    if kind == "normalcall":
        if mech == "request":
            return Step("SK", "K0", f"normal call #{d.get('number', '?')}")
        return Step(me, me, f"normal call #{d.get('number', '?')} {outcome}")
    if kind in ("access", "fetch"):
        what = d.get("access", kind)
        if outcome == "allowed":  # the attacker's: where it aimed (its virtual address)
            va = _num(d.get("va") if d.get("va") is not None else d.get("gpa"))
            return Step(me, "memory", f"{what} {va}", group=str(what), addresses=[va])
        where = _num(d.get("gpa") if d.get("gpa") is not None else d.get("va"))
        return Step(me, "memory", f"{what} {where}: {mech} {outcome}")
    if kind == "dma":
        target = d.get("gpa") if d.get("gpa") is not None else d.get("iova", "?")
        verb = {"from-memory": "read", "to-memory": "write"}.get(str(d.get("direction")), "")
        size = f" ({d['length']} B)" if d.get("length") is not None else ""
        by = f" by {mech}" if outcome == "blocked" else ""
        return Step("device", "memory", f"DMA {verb} {_num(target)}{size}: {outcome}{by}")
    if kind == "iommu-fault":
        target = d.get("to_vtl")
        text = f"IOMMU fault ({d.get('refused_by', mech)}) → VTL{target}: {outcome}"
        if outcome in ("unreported", "dropped") or target is None:
            why = f" ({d['why']})" if d.get("why") else ""
            return Step("HV", "HV", text + why)
        return Step("HV", lane(int(target), 0), text)
    if kind in ("mmio", "io"):
        return Step(me, "device", f"{kind} {mech}: {outcome}")
    if kind == "bugcheck":
        return Step(me, me, f"BUGCHECK {outcome}")
    if kind == "crash":  # the kernel's CrashNotify, as the hypervisor recorded it
        bugcheck = d.get("code")
        shown = f"0x{bugcheck:X}" if isinstance(bugcheck, int) else "?"  # codes read in hex
        return Step(me, "HV", f"crash notify {shown}")
    if kind == "boot":
        component = d.get("component")
        what = f" {component}" if component else ""
        return Step(me, me, f"{mech}{what}: {outcome}")
    return Step(me, me, f"{mech}: {outcome}")


def interesting(event: Event) -> bool:
    """Allowed memory accesses are a flood: only the attacker's own are drawn."""
    return not (
        event.kind == "access"
        and event.outcome == "allowed"
        and not event.actor.startswith("attacker")
    )


def _access_label(step: Step) -> str:
    shown = ", ".join(step.addresses[:3]) + (", …" if len(step.addresses) > 3 else "")
    count = f" ({len(step.addresses)} accesses)" if len(step.addresses) > 1 else ""
    return f"{step.group} {shown}{count}"


def decisive_event(
    events: Sequence[Event], mechanism: str, decisive: tuple[str, ...] = ()
) -> Event | None:
    """The first event that refused what the verdict names (None for '-')."""
    if mechanism in ("-", ""):
        return None
    for event in events:
        if deciding_mechanism([event], decisive) == mechanism:
            return event
    return None


def _merge(steps: list[Step]) -> list[Step]:
    """A VTL switch and the call/reply it carries become one arrow; repeats become ``×N``."""
    merged: list[Step] = []
    for step in steps:
        last = merged[-1] if merged else None
        if (
            last is not None
            and step.group
            and (last.group, last.src, last.dst) == (step.group, step.src, step.dst)
        ):
            last.addresses += step.addresses
            last.label = _access_label(last)
            last.seqs += step.seqs
            if len(last.seqs) <= 4:
                last.tip = f"{last.tip}\n{step.tip}"
            continue
        if last is not None and (last.src, last.dst) == (step.src, step.dst) and last.count == 1:
            if last.transition and not step.transition and step.src != step.dst:
                last.label = f"{last.label}: {step.label}"
                last.transition = False
                last.reply = step.reply
                last.refusal = last.refusal or step.refusal
                last.decisive = last.decisive or step.decisive
                last.seqs += step.seqs
                last.tip = f"{last.tip}\n{step.tip}"
                continue
            if step.transition and not last.transition and not last.via_hv and last.src != last.dst:
                last.label = f"{last.label} · {step.label}"
                last.via_hv = True
                last.refusal = last.refusal or step.refusal
                last.decisive = last.decisive or step.decisive
                last.seqs += step.seqs
                last.tip = f"{last.tip}\n{step.tip}"
                continue
        if last is not None and last.key == step.key and not last.decisive and not step.decisive:
            last.count += 1
            last.seqs += step.seqs
            if last.count == 2:
                last.tip += f"\n(and {step.tip})"
            continue
        merged.append(step)
    return merged


def _same(a: Sequence[Step], b: Sequence[Step]) -> bool:
    return all(
        x.key == y.key and x.count == y.count and not y.decisive and x.repeat is None
        for x, y in zip(a, b, strict=True)
    )


def _fold(steps: list[Step], longest: int = 4) -> list[Step]:
    """A block of 2..``longest`` steps repeated back to back is drawn once, marked ``×n``."""
    out: list[Step] = []
    i, n = 0, len(steps)
    while i < n:
        best: tuple[int, int] | None = None
        for k in range(2, longest + 1):
            block = steps[i : i + k]
            if len(block) < k or any(s.repeat or s.decisive for s in block):
                break
            times = 1
            while i + (times + 1) * k <= n and _same(
                block, steps[i + times * k : i + (times + 1) * k]
            ):
                times += 1
            if times >= 2 and (best is None or times * k > best[0] * best[1]):
                best = (k, times)
        if best is None:
            out.append(steps[i])
            i += 1
            continue
        k, times = best
        block = steps[i : i + k]
        for copy in range(1, times):
            for first, again in zip(block, steps[i + copy * k : i + (copy + 1) * k], strict=True):
                first.seqs += again.seqs
        block[0].repeat = (k, times)
        out.extend(block)
        i += k * times
    return out


def _units(steps: list[Step]) -> list[list[Step]]:
    """Steps grouped so a repeated block is never cut."""
    units: list[list[Step]] = []
    i = 0
    while i < len(steps):
        repeat = steps[i].repeat
        size = repeat[0] if repeat is not None else 1
        units.append(steps[i : i + size])
        i += size
    return units


def _cap(steps: list[Step], cap: int) -> tuple[list[Step], int]:
    """At most about ``cap`` rows: the head, the deciding step's neighbourhood and the tail."""
    if len(steps) <= cap:
        return steps, 0
    units = _units(steps)
    rows = [len(u) for u in units]
    decisive = next((i for i, u in enumerate(units) if any(s.decisive for s in u)), None)
    tail, before, after = 8, 10, 20
    keep = set(range(max(len(units) - tail, 0), len(units)))
    if decisive is not None:
        keep |= set(range(max(decisive - before, 0), min(decisive + after + 1, len(units))))
    used = sum(rows[i] for i in keep)
    for i in range(len(units)):  # the head, with what the cap leaves
        if i in keep:
            continue
        if used + rows[i] > cap:
            break
        keep.add(i)
        used += rows[i]
    out: list[Step] = []
    elided_total = 0
    gap = 0
    for i, unit in enumerate(units):
        if i in keep:
            if gap:
                out.append(Step("", "", "", elided=gap))
                gap = 0
            out.extend(unit)
        else:
            events = sum(len(step.seqs) or 1 for step in unit)
            gap += events
            elided_total += events
    if gap:
        out.append(Step("", "", "", elided=gap))
    return out, elided_total


def diagram(
    events: Sequence[Event],
    mechanism: str,
    decisive: tuple[str, ...] = (),
    cap: int = DEFAULT_CAP,
    before: Sequence[Event] = (),
) -> Diagram:
    """The sequence diagram of ``events`` (the trace after the attack started).  ``before`` is the
    trace up to the attack, searched for the deciding event if the attack part has none."""
    shown = [e for e in events if interesting(e)]
    deciding = decisive_event(events, mechanism, decisive)
    note = ""
    if deciding is None and mechanism not in ("-", ""):
        earlier = decisive_event(before, mechanism, decisive)
        if earlier is not None:
            note = (
                f"The deciding check ({mechanism}) refused at event #{earlier.seq}, before the "
                "attack started."
            )
    steps: list[Step] = []
    for event in shown:
        step = place(event)
        step.seqs = [event.seq]
        step.tip = tooltip(event)
        step.refusal = deciding_mechanism([event], decisive)
        if step.refusal == "-":
            step.refusal = ""
        step.decisive = deciding is not None and event is deciding
        steps.append(step)
    steps = _fold(_merge(steps))
    steps, elided = _cap(steps, cap)
    used = {s.src for s in steps} | {s.dst for s in steps}
    lanes = [name for name in LANES if name in CORE_LANES or name in used]
    return Diagram(
        lanes=lanes,
        steps=steps,
        events=len(events),
        filtered=len(events) - len(shown),
        elided=elided,
        decisive_seq=deciding.seq if deciding is not None else None,
        note=note,
    )
