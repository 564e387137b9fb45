"""The boot loader's half of loading the Secure Kernel (host side: it holds the machine).

vbs-internals §1.1 row 11: winload/OslVsmSetup loads ``securekernel.exe`` into the memory it
reserved, hands it the boot configuration, and only then enters it.  Here the loader builds the
SK's address space over RAM, reduces the boot ``Policy`` to the values of the SK's configuration
block (``vbsim.sk.layouts.Config``), lets the image build itself through a :class:`LoaderBlock`
(stores into its own memory, the per-processor GS blocks), marks the image's frames and the
reserved pool as the SK's in its own-page bitmap, tells the SK which frames its image occupies,
and drops the block: the SK never sees the machine, RAM or the policy again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.boot.kernel_space import KernelSpace
from vbsim.sk.kernel import LoaderBlock, SecureKernel
from vbsim.sk.layouts import Config, Field

if TYPE_CHECKING:
    from vbsim.image import RevocationPolicy
    from vbsim.machine import Machine
    from vbsim.policy import Policy


def sk_config(policy: Policy, processors: int, ram_pages: int) -> tuple[tuple[Field, int], ...]:
    """The SK configuration block's values, copied from the boot policy."""
    return (
        (Config.HVCI, int(policy.hvci)),
        (Config.KDP, int(policy.kdp)),
        (Config.HVPT, int(policy.hvpt)),
        (Config.MBEC, int(policy.mbec)),
        (Config.CREDENTIAL_GUARD, int(policy.credential_guard)),
        (Config.BUILD, ord(policy.build[:1] or "B")),
        (Config.LEGACY_UNCHECKED, int(policy.legacy.unchecked_securecall_params)),
        (Config.LEGACY_DOUBLE_FETCH, int(policy.legacy.securecall_double_fetch)),
        (Config.VPS, processors),
        (Config.RAM_PAGES, ram_pages),
        (Config.VTL0_DEFAULT_MASK, 0xB if policy.hvci else 0xF),
        (Config.HYPERGUARD, int(policy.hyperguard)),
    )


def load_secure_kernel(
    machine: Machine,
    policy: Policy,
    pool: tuple[int, int] | None = None,
    revocation: RevocationPolicy | None = None,
) -> tuple[SecureKernel, KernelSpace]:
    """The SK image, built in its own address space; returns it with the loader's side of that
    space (host tools keep it, e.g. ``System.sk_space``; the SK keeps only its KernelMap)."""
    ram = machine.ram
    processors = len(machine.vps)
    space = KernelSpace(ram, "securekernel")
    block = LoaderBlock(
        space,
        sk_config(policy, processors, ram.pages),
        policy.build,
        processors,
        ram.pages,
        ram.write,
        ram.place_image,
        machine.entropy.read,
    )
    sk = SecureKernel(block, pool, revocation)
    image = tuple(sorted(set(space.frames)))
    pool_frames = range(pool[0], pool[0] + pool[1]) if pool is not None else range(0)
    sk.host_mark_own_pages(ram, [*image, *pool_frames])
    sk.image_pfns = image
    sk.loader = None
    return sk, space
