"""The IUM application binary interface: numbers and the trustlet layout (no behaviour).

What both sides of a trustlet's system calls apply, like :mod:`vbsim.hv.defs` for hypercalls:
the Secure Kernel implements it (``vbsim.sk.ium``), ``iumbase.dll`` and trustlet code call it
(``vbsim.ium``), NT's secure-process support (``vbsim.nt.secure_process``) uses the normal-call
numbers and the image base, and host-side tools read trustlet memory at these VAs.  Neither
kernel imports the other's internals for these (DESIGN.md; tests/architecture).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

PAGE_SIZE = 0x1000

# -- the model's VTL1 user layout for a trustlet (model: no public layout) -----------------------
IMAGE_BASE = 0x0000_7FF6_0000_0000
PRIVATE_BASE = 0x0000_0001_0000_0000
PRIVATE_PAGES = 8  # heap, stack and message buffers (model)
MESSAGE_VA = PRIVATE_BASE  # where incoming messages are captured (first private page)
REPLY_VA = PRIVATE_BASE + PAGE_SIZE  # where the trustlet leaves its reply
HEAP_VA = PRIVATE_BASE + 2 * PAGE_SIZE
#: Where a trustlet's secure sections (shared with VTL0) are mapped, one 64 KiB slot each.
SECTION_BASE = 0x0000_0002_0000_0000

# -- normal calls the SK makes to NT for IUM (vbs-internals §2.5; the real numbers are not public)
NORMAL_ALLOCATE_PAGES = 1  # "give me physical pages"
NORMAL_IUM_SYSCALL = 2  # IumGenericSyscall: a forwarded NT system call

# -- secure system calls (vbs-internals §2.6, §4.2) ---------------------------------------------
SECURE_SYSCALL_BIT = 0x0800_0000  # x64: bit 27 of the service number (vbs-internals §2.6)
#: Secure system calls: index (number - 0x0800_0000) → name, as the IumFuzzer stub table lists
#: them (vbs-internals §4.2; [V] for that build, [U] in general).
SECURE_SYSCALLS: Mapping[int, str] = MappingProxyType(
    {
        0x00: "IumAssignMemoryToSocDomain",
        0x01: "IumAwaitSmc",
        0x02: "IumCreateSecureDevice",
        0x03: "IumCreateSecureSection",
        0x04: "IumCreateSecureSectionSpecifyPages",
        0x05: "IumCrypto",
        0x06: "IumDmaMapMemory",
        0x07: "IumEmitSmc",
        0x08: "IumFlushSecureSectionBuffers",
        0x09: "IumGetDmaEnabler",
        0x0A: "IumGetExposedSecureSection",
        0x0B: "IumGetIdk",
        0x0C: "IumMapSecureIo",
        0x0D: "IumOpenCurrentExtension",
        0x0E: "IumOpenSecureSection",
        0x0F: "IumPostMailbox",
        0x10: "IumProtectSecureIo",
        0x11: "IumQuerySecureDeviceInformation",
        0x12: "IumSecureStorageGet",
        0x13: "IumSecureStoragePut",
        0x14: "IumSetDmaTargetProperties",
        0x15: "IumSetPolicyExtension",
        0x16: "IumUnmapSecureIo",
        0x17: "IumUpdateSecureDeviceState",
    }
)
SECURE_NUMBERS: Mapping[str, int] = MappingProxyType(
    {name: SECURE_SYSCALL_BIT | index for index, name in SECURE_SYSCALLS.items()}
)

#: IumCrypto's request block (model): u32 op, u32 key, u64 in, u64 in_len, u64 out, u64 out_cap,
#: u64 out_len; the operations and the key selectors (IDK, the local and per-boot keys, §4.3).
CRYPTO_REQUEST = 48
OP_ENCRYPT, OP_DECRYPT = 1, 2
IDK, LOCAL, PER_BOOT = 0, 1, 2

#: The model build's NT system-service numbers: the ABI ntdll stubs, NT's dispatch table
#: (``vbsim.nt.syscalls.NUMBERS`` must agree; tests/ium check it) and the SK's IUM filter apply.
NT_NUMBERS: Mapping[str, int] = MappingProxyType(
    {
        "NtTestAlert": 0x0001,
        "NtAllocateVirtualMemory": 0x0018,
        "NtFreeVirtualMemory": 0x001E,
        "NtProtectVirtualMemory": 0x0050,
        "NtQueryVirtualMemory": 0x0023,
        "NtReadVirtualMemory": 0x003F,
        "NtWriteVirtualMemory": 0x003A,
        "NtTerminateProcess": 0x002C,
        "NtQueryValueKey": 0x0017,
        "NtSetValueKey": 0x0060,
        "NtLoadDriver": 0x0106,
        "NtDeviceIoControlFile": 0x0007,
        "NtQueryInformationProcess": 0x0019,
        "NtAlpcSendWaitReceivePort": 0x0085,
        "NtCreateUserProcess": 0x00C8,
    }
)
