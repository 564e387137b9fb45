"""The application store: user-mode images NtCreateUserProcess can start (unsigned: with no user-
mode code-integrity policy, Windows runs any application image)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.image import ImageKind, build_image

if TYPE_CHECKING:
    from vbsim.nt.kernel import NtKernel

HELLO = "hello.exe"


@guest_code("app.hello.main")
def _hello(vp: Cpu) -> int:
    """A user program: one system call, then it returns its status."""
    from vbsim.nt.syscalls import syscall

    return syscall(vp, "NtTestAlert")


@functools.lru_cache(maxsize=1)
def _images() -> tuple[tuple[str, bytes], ...]:
    return (
        (HELLO, build_image(ImageKind.APPLICATION, HELLO, "app.hello.main", ["app.hello.main"])),
    )


def install(nt: NtKernel) -> None:
    nt.app_store = dict(_images())
