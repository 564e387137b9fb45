"""The system disk: signed component images and the persistent configuration.

Component images are real PE32+ files built by :mod:`vbsim.image` and Authenticode-signed by the
model PKI with the Windows-component profile; their version resource carries the version and SVN
the policy installs.  The driver store (``\\System32\\drivers``) is signed here too, when the disk
is built: the signing service is host side (:mod:`vbsim.signing`), and NT only reads the files
(``Disk.drivers``, which the loader hands NT's file system at boot).  The disk also holds what
persists across reboots: the registry values that winload reads
(``DeviceGuard\\EnableVirtualizationBasedSecurity``) and the UEFI variables that the UEFI lock
writes (vbs-internals §1.1 row 3, §1.4).  Attacks change the disk, then reboot.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from vbsim.image import ComponentVersion, ImageKind, build_image, data_dir
from vbsim.policy import Component, Policy
from vbsim.signing import model_pki, other_pki, sign_image

#: Component file → (image kind, the entry routine its code section names).
COMPONENT_KINDS: dict[str, tuple[ImageKind, str]] = {
    "hvix64.exe": (ImageKind.HYPERVISOR, "hv.launch"),
    "securekernel.exe": (ImageKind.SECURE_KERNEL, "sk.entry"),
    "ntoskrnl.exe": (ImageKind.NT_KERNEL, "nt.KiSystemCall64"),
}
#: Trustlets installed on disk, with the trustlet ID they are started as.
TRUSTLET_IMAGES: dict[str, int] = {"LsaIso.exe": 1}
VBS_REGISTRY_KEY = (
    r"HKLM\SYSTEM\CurrentControlSet\Control\DeviceGuard\EnableVirtualizationBasedSecurity"
)
VBS_EFI_VARIABLE = "VbsPolicy"


def component_image(name: str, version: str, svn: int, tampered: bool) -> bytes:
    """The signed image of a component as installed (cached per PKI: signing is the slow part)."""
    return _component_image(name, version, svn, tampered, str(data_dir()))


@functools.lru_cache(maxsize=64)
def _component_image(name: str, version: str, svn: int, tampered: bool, pki_dir: str) -> bytes:
    kind, entry = COMPONENT_KINDS[name]
    numbers = ComponentVersion.parse(_four(version), svn=svn)
    image = build_image(kind, name, entry, [entry], version=numbers)
    signed = sign_image(image, model_pki().signer("windows"))
    if tampered:
        # Change one byte of the code section after signing: the Authenticode digest no longer
        # matches (Downdate's "invalidated securekernel.exe", vbs-internals §6 A16).
        data = bytearray(signed)
        data[0x400 + 40] ^= 0xFF
        return bytes(data)
    return signed


def driver_store() -> dict[str, bytes]:
    """The driver store's files as installed: each store driver built, then signed by the
    model PKI's ``codesign`` profile, by the other root, or not at all, as its spec says; and
    the EDR (boot-start, ``codesign``).  Cached per PKI: signing is the slow part."""
    return dict(_driver_store(str(data_dir())))


@functools.lru_cache(maxsize=4)
def _driver_store(pki_dir: str) -> tuple[tuple[str, bytes], ...]:
    from vbsim.nt.drivers import DRIVERS, store_image
    from vbsim.nt.notify import EDR_DRIVER, edr_unsigned

    signers = {"model": model_pki().signer("codesign"), "other": other_pki().signer("codesign")}
    files: list[tuple[str, bytes]] = []
    for spec in DRIVERS:
        image = store_image(spec)
        signer = signers.get(spec.signer)
        files.append((spec.name, image if signer is None else sign_image(image, signer)))
    files.append((EDR_DRIVER, sign_image(edr_unsigned(), signers["model"])))
    return tuple(files)


def _four(version: str) -> str:
    parts = version.split(".")
    return ".".join(parts + ["0"] * (4 - len(parts)))


@dataclass
class Disk:
    components: dict[str, Component] = field(default_factory=dict)
    trustlets: dict[str, Component] = field(default_factory=dict)
    registry: dict[str, int] = field(default_factory=dict)
    efi_variables: dict[str, int] = field(default_factory=dict)
    #: The driver store's files (``\\SystemRoot\\System32\\drivers``), signed at install:
    #: the loader hands them to NT's file system at boot (``chain.load_nt``).
    drivers: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def install(cls, policy: Policy) -> Disk:
        disk = cls(
            {name: policy.component(name) for name in COMPONENT_KINDS},
            {name: policy.component(name) for name in TRUSTLET_IMAGES},
        )
        disk.registry[VBS_REGISTRY_KEY] = int(policy.vbs)
        # The driver store's files, signed at install: NT's file system reads them at boot.
        disk.drivers = driver_store()
        if policy.uefi_lock:
            # With UEFI lock the setting lives in a boot-services-only EFI variable (§1.1 row 3).
            disk.efi_variables[VBS_EFI_VARIABLE] = int(policy.vbs)
        return disk

    def trustlet(self, name: str) -> bytes:
        """An installed trustlet image (LsaIso.exe ...), as its component entry says."""
        from vbsim.boot.trustlets import installed

        return installed(name, self.trustlets.get(name, Component()))

    def image(self, name: str) -> bytes:
        component = self.components[name]
        return component_image(name, component.version, component.svn, component.tampered)
