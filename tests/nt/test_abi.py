"""NT's copy of the VTL0/VTL1 ABI (nt/layouts.py) agrees with the Secure Kernel's and IUM's.

The two kernels are separate images and neither imports the other's internals
(tests/architecture); the numbers both apply are compiled into each.  This test is where the
two copies meet: change one and it fails."""

from __future__ import annotations

from vbsim.ium import lsaiso
from vbsim.nt import drivers
from vbsim.nt import layouts as nt
from vbsim.sk.ium import process as ium_process
from vbsim.sk.ium import syscalls as ium_syscalls
from vbsim.sk.services import allocation, dump, hvci, kdp


def test_numbers_agree() -> None:
    assert nt.BOOT_IMAGE_SPAN == hvci.BOOT_IMAGE_SPAN
    assert nt.NORMAL_ALLOCATE_PAGES == ium_process.NORMAL_ALLOCATE_PAGES
    assert nt.NORMAL_IUM_SYSCALL == ium_syscalls.NORMAL_IUM_SYSCALL
    assert nt.NORMAL_GET_PHYSICAL_PAGES == allocation.NORMAL_GET_PHYSICAL_PAGES
    assert nt.COPY_ALLOCATE == kdp.COPY_ALLOCATE
    assert (nt.DUMP_REQUEST_LIST, nt.DUMP_REQUEST_PAGE) == (dump.REQUEST_LIST, dump.REQUEST_PAGE)
    assert nt.DUMP_PAGE_ENCRYPTED == dump.PAGE_ENCRYPTED
    assert nt.DUMP_PAGE_WITHHELD == dump.PAGE_WITHHELD
    assert nt.DUMP_LIST_MAX == dump.LIST_MAX
    assert nt.DUMP_ENTRY_GIVEN == dump.ENTRY_GIVEN
    assert nt.TRUSTLET_IMAGE_BASE == ium_process.IMAGE_BASE
    assert (nt.LSAISO_OP_PROTECT, nt.LSAISO_OP_RESPOND) == (lsaiso.OP_PROTECT, lsaiso.OP_RESPOND)
    assert nt.LSAISO_USER_LEN == lsaiso.USER_LEN


def test_mdl_encoding_agrees() -> None:
    for pfns, count, offset, start, size in (
        ([5, 6, 7], 0x2345, 0x10, 0xFFFF_8000_0000_5000, -1),
        ([], 0, 0, 0, 0x30),
        ([1 << 40], 0xFFFF_FFFF, 0xFFF, 0x1234, 0xFFFF),
    ):
        assert nt.mdl_bytes(pfns, count, offset, start, size) == allocation.mdl_bytes(
            pfns, count, offset, start, size
        )


def test_nt_and_the_sk_lay_the_store_images_out_alike() -> None:
    from vbsim.boot.disk import driver_store
    from vbsim.image import parse_image

    store = driver_store()
    assert drivers.SAMPLE_DRIVER in store
    for name, image in store.items():
        parsed = parse_image(image)
        ours, theirs = drivers.image_layout(image, parsed), hvci.image_layout(image, parsed)
        assert (ours is None) == (theirs is None), name
        if ours is not None and theirs is not None:
            assert (ours.pages, ours.code) == (theirs.pages, theirs.code), name
