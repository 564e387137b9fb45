"""What a kernel image asks of the boot loader that builds it (a structural interface).

NT's and the Secure Kernel's image objects are built by the host-side loader
(:class:`vbsim.boot.kernel_space.KernelSpace`): winload maps the image, allocates its data pages,
links its routines and writes its initial data before any processor runs it.  The kernel modules
name the loader only through this protocol, so guest packages never import the host side; the
loader is used while the image is built and dropped before it runs (the runtime walk of
``tests/architecture`` confirms no image keeps it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from vbsim.guest.address_space import KernelMap
    from vbsim.hw.regs import PrivateState


class ImageBuilder(Protocol):
    """The loader operations kernel construction uses (each as KernelSpace defines it)."""

    @property
    def kernel_map(self) -> KernelMap:
        """The symbols the running kernel keeps (root, routine VAs, code pages)."""
        ...

    @property
    def built_frames(self) -> list[int]: ...

    @property
    def ram_pages(self) -> int: ...

    def alloc_data(self, pages: int = 1, contiguous: bool = False) -> tuple[int, int]: ...

    def install(self, name: str) -> int: ...

    def build_idt(
        self, handlers: dict[int, str], default: str | None = None
    ) -> tuple[int, int]: ...

    def initial_state(
        self, rip: int, rsp: int = 0, idt: tuple[int, int] = (0, 0)
    ) -> PrivateState: ...

    def lookup_gpa(self, va: int) -> int: ...

    def write_u64(self, va: int, value: int) -> None: ...

    def write(self, va: int, data: bytes) -> None: ...

    def place_image(self, vtl: int, block_va: int, image: object) -> None: ...
