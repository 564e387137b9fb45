"""Goal checks shared by scenarios: what the machine shows after the attack, read from outside
the attacker (host-side inspection of RAM and state, like a hardware debugger)."""

from __future__ import annotations

from vbsim.attacks.context import AttackContext
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE


def loot_contains(ctx: AttackContext, secret: bytes, key: str = "loot_gpa") -> bool:
    """Did the secret's bytes reach the attacker's buffer (a GPA recorded in ``notes[key]``)?"""
    gpa = ctx.notes.get(key)
    if ctx.system is None or ctx.system.machine is None or gpa is None or not secret:
        return False
    return secret in ctx.system.machine.ram.read(int(gpa), PAGE_SIZE)


def pages_digest(ctx: AttackContext, pfns: list[int]) -> bytes:
    import hashlib

    assert ctx.system is not None and ctx.system.machine is not None
    ram = ctx.system.machine.ram
    h = hashlib.sha256()
    for pfn in sorted(pfns):
        h.update(ram.read(pfn << PAGE_SHIFT, PAGE_SIZE))
    return h.digest()


def vtl0_rights(ctx: AttackContext, pfns: list[int]) -> list[int]:
    assert ctx.system is not None and ctx.system.machine is not None
    slat = ctx.system.machine.slat
    return [slat.rights(0, pfn) if slat is not None else 0xF for pfn in pfns]
