"""Secure services, one module per family; each registers its handlers with the SK."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vbsim.sk.kernel import SecureKernel


def register_all(sk: SecureKernel) -> None:
    from vbsim.sk.ium import syscalls
    from vbsim.sk.services import (
        allocation,
        boot,
        dump,
        handles,
        hotpatch,
        hvci,
        ium,
        kcfg,
        kdp,
        livedump,
    )

    # allocation before hvci: HVCI's hash records are mapped right behind the arena.
    for module in (boot, allocation, hvci, ium, kdp, kcfg, dump, hotpatch, handles, livedump):
        module.register(sk)
    syscalls.register(sk)
