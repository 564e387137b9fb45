"""NTSTATUS values and bugcheck codes used by NT and the Secure Kernel.

Values are from the Windows SDK ``ntstatus.h`` and the documented bugcheck code list
(learn.microsoft.com "Bug Check Code Reference").  Where the reference leaves the exact status of
a VBS failure unverified (vbs-internals §3.6), the choice is noted at the use site.
"""

from __future__ import annotations

from enum import IntEnum


class NtStatus(IntEnum):
    SUCCESS = 0x0000_0000
    UNSUCCESSFUL = 0xC000_0001
    NOT_IMPLEMENTED = 0xC000_0002
    INVALID_INFO_CLASS = 0xC000_0003
    INFO_LENGTH_MISMATCH = 0xC000_0004
    ACCESS_VIOLATION = 0xC000_0005
    INVALID_HANDLE = 0xC000_0008
    INVALID_PARAMETER = 0xC000_000D
    NO_MEMORY = 0xC000_0017
    #: ntstatus.h: what a kernel answers when a resource it allocates from runs out.
    INSUFFICIENT_RESOURCES = 0xC000_009A
    CONFLICTING_ADDRESSES = 0xC000_0018
    INVALID_SYSTEM_SERVICE = 0xC000_001C
    #: ntstatus.h; MmProtectDriverSection: "The specified section is already protected" (MS Learn).
    ALREADY_COMMITTED = 0xC000_0021
    NOT_COMMITTED = 0xC000_002D
    ACCESS_DENIED = 0xC000_0022
    BUFFER_TOO_SMALL = 0xC000_0023
    OBJECT_TYPE_MISMATCH = 0xC000_0024
    OBJECT_NAME_NOT_FOUND = 0xC000_0034
    INVALID_PAGE_PROTECTION = 0xC000_0045
    PRIVILEGE_NOT_HELD = 0xC000_0061
    INVALID_IMAGE_FORMAT = 0xC000_007B
    FREE_VM_NOT_AT_BASE = 0xC000_009F
    MEMORY_NOT_ALLOCATED = 0xC000_00A0
    NOT_SUPPORTED = 0xC000_00BB
    INVALID_DEVICE_STATE = 0xC000_0184
    NOT_FOUND = 0xC000_0225
    #: ntstatus.h: NtClose on a handle protected from close (windows-sys: -1073741259).
    HANDLE_NOT_CLOSABLE = 0xC000_0235
    INVALID_IMAGE_HASH = 0xC000_0428
    IMAGE_CERT_REVOKED = 0xC000_0603
    PROCESS_IS_PROTECTED = 0xC000_0712
    PROCESS_IS_TERMINATING = 0xC000_010A
    INVALID_SIGNATURE = 0xC000_A000
    AUTH_TAG_MISMATCH = 0xC000_A002

    @classmethod
    def name_of(cls, value: int) -> str:
        try:
            return f"STATUS_{cls(value).name}"
        except ValueError:
            return f"0x{value:08X}"


class BugCheck(IntEnum):
    #: Bug check 0x1A (MS Learn bug check code reference); MmProtectDriverSection raises it with
    #: type 0x1100 for an address in no loaded driver image (MS Learn, MmProtectDriverSection).
    MEMORY_MANAGEMENT = 0x1A
    KMODE_EXCEPTION_NOT_HANDLED = 0x1E
    SYSTEM_SERVICE_EXCEPTION = 0x3B
    PAGE_FAULT_IN_NONPAGED_AREA = 0x50
    UNEXPECTED_KERNEL_MODE_TRAP = 0x7F
    BAD_POOL_CALLER = 0xC2
    CRITICAL_PROCESS_DIED = 0xEF
    ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY = 0xFC
    #: Bug check 0x139 (MS Learn, "Bug Check 0x139 KERNEL_SECURITY_CHECK_FAILURE"): parameter 1
    #: is the fast-fail code, 10 for an indirect call kernel CFG refused.
    KERNEL_SECURITY_CHECK_FAILURE = 0x139
    #: The Secure Kernel's own bugcheck; the model uses it for an unknown secure-call number
    #: (vbs-internals §2.2 step 6: "the machine will crash"; 0x121 reported there is doubtful).
    SECURE_KERNEL_ERROR = 0x18B
    #: vbs-internals §5.7 [V SDK bugcheck list].
    HYPERGUARD_VIOLATION = 0x18C


def ok(status: int) -> bool:
    return status < 0x8000_0000
