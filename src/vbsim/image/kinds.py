"""What kind of component an image is, and the PE header values vbsim uses for each kind.

The kinds follow the layers of vbs-internals §0: hypervisor (``hvix64.exe``), Secure Kernel
(``securekernel.exe``), NT kernel (``ntoskrnl.exe``), drivers, trustlets (IUM, §3) and ordinary
applications.  The subsystem and file-type values are a model choice (not taken from the
reference): kernel-mode kinds are ``IMAGE_SUBSYSTEM_NATIVE`` system drivers, user-mode kinds are
console applications.
"""

from __future__ import annotations

from enum import StrEnum

from vbsim.image.version import VFT2_DRV_SYSTEM, VFT_APP, VFT_DRV

IMAGE_SUBSYSTEM_NATIVE = 1
IMAGE_SUBSYSTEM_WINDOWS_CUI = 3


class ImageKind(StrEnum):
    HYPERVISOR = "hypervisor"
    SECURE_KERNEL = "securekernel"
    NT_KERNEL = "ntkernel"
    DRIVER = "driver"
    TRUSTLET = "trustlet"
    APPLICATION = "application"

    @property
    def kernel_mode(self) -> bool:
        return self not in (ImageKind.TRUSTLET, ImageKind.APPLICATION)

    @property
    def subsystem(self) -> int:
        return IMAGE_SUBSYSTEM_NATIVE if self.kernel_mode else IMAGE_SUBSYSTEM_WINDOWS_CUI

    @property
    def file_type(self) -> tuple[int, int]:
        """``VS_FIXEDFILEINFO`` (dwFileType, dwFileSubtype)."""
        return (VFT_DRV, VFT2_DRV_SYSTEM) if self.kernel_mode else (VFT_APP, 0)
