"""Which check decided: read from the trace of the attack, never declared by the scenario."""

from __future__ import annotations

from vbsim.trace import Event

#: Outcomes that mean "something refused".
_REFUSED = {
    "denied",
    "refused",
    "rejected",
    "blocked",
    "violation",
    "halted",
    "undeliverable",
    "not-running",
    "continue-without-vbs",
    "disabled",  # the IUM system-call filter
    "overridden",  # the UEFI lock over the registry
}


def deciding_mechanism(events: list[Event], decisive: tuple[str, ...] = ()) -> str:
    """The first refusal in ``events`` (an access denied by paging or SLAT, a hypercall or
    secure call refused, an admission check failed, a HyperGuard violation, a boot check), or
    the bugcheck that ended the flow; '-' if nothing refused anything.  A scenario whose goal is
    stopped by a later check than the first refusal names it in ``decisive`` (A16: the invalid
    Secure Kernel is rejected first, but what keeps the machine from running without VBS is
    Mandatory)."""
    for event in events:
        if event.mechanism in decisive and event.outcome in _REFUSED:
            return event.mechanism
    for event in events:
        if event.kind == "access" and event.outcome == "denied":
            return event.mechanism
        if event.kind == "hypercall" and event.outcome not in ("success", "invalid-opcode"):
            return f"hypercall:{event.detail.get('call', '?')}={event.outcome}"
        if event.kind == "hypercall" and event.outcome == "invalid-opcode":
            return f"{event.mechanism}:#UD"
        if event.kind in ("vtl", "fetch") and event.outcome == "invalid-opcode":
            return f"{event.mechanism}:#UD"
        if event.outcome in _REFUSED:
            return event.mechanism
        if (
            event.kind == "securecall"
            and event.outcome.startswith("STATUS_")
            and event.outcome != "STATUS_SUCCESS"
        ):
            return f"securecall:{event.outcome}"
        if (
            event.kind == "syscall"
            and event.outcome.startswith("STATUS_")
            and event.outcome not in ("STATUS_SUCCESS",)
        ):
            service = event.detail.get("service", "?")
            if service == "?":  # no such service: name the number, in hex as the ABI writes it
                number = event.detail.get("number")
                service = f"0x{number:08X}" if isinstance(number, int) else str(number)
            return f"{event.mechanism}:{service}={event.outcome}"
    for event in events:
        if event.kind == "bugcheck":
            return f"bugcheck:{event.outcome}"
    return "-"
