"""Model control flow for guest events that end a flow of guest execution.

Guest faults are guest events: the processor delivers them to the current VTL's kernel through
its IDT (see :mod:`vbsim.hw.vp`).  When the kernel decides a flow of execution cannot continue —
it kills a thread, bugchecks, or the processor triple-faults — the Python frames of that guest
code must unwind.  These exceptions do exactly that and are caught at the machine's run loop.
They are *not* errors of the model; any other exception escaping a run is a bug in vbsim.
"""

from __future__ import annotations


class GuestTermination(Exception):
    """A flow of guest execution ended (caught by the run loop that started it)."""


class ThreadTerminated(GuestTermination):
    """A kernel ended the current thread (e.g. an unhandled user-mode exception)."""

    def __init__(self, reason: str, vector: int | None = None, error_code: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.vector = vector
        self.error_code = error_code


class Bugcheck(GuestTermination):
    """A kernel stopped the system (KeBugCheckEx in NT or the Secure Kernel)."""

    def __init__(self, code: int, name: str, vtl: int, *params: int) -> None:
        super().__init__(f"bugcheck 0x{code:X} {name} in VTL{vtl}")
        self.code = code
        self.name = name
        self.vtl = vtl
        self.params = params


class TripleFault(GuestTermination):
    """Exception delivery failed while delivering a double fault: the VP shuts down."""

    def __init__(self, vtl: int, detail: str) -> None:
        super().__init__(f"triple fault in VTL{vtl}: {detail}")
        self.vtl = vtl
        self.detail = detail


class GuestHang(GuestTermination):
    """The same instruction faulted again and again without progress (a livelock)."""
