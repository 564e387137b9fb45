"""Secure service call numbers (``_SKSERVICE``) per Windows build — vbs-internals §2.4.

The numbers come from public symbols reproduced in two enum dumps: build "A" (an older Windows 10
build, IntroVirt's NT enum header) and build "B" (a newer build, a C# NT enum dump).  They are
*configuration*, selected by the policy's ``build``; no code compares against a literal number.
Only the services the model implements are listed; every other number is unknown to the Secure
Kernel and bugchecks it, as on Windows (vbs-internals §2.2 step 6).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class Service(StrEnum):
    PHASE4_INIT = "PHASE4_INIT"
    START_PROCESSOR = "START_PROCESSOR"
    CREATE_PROCESS = "CREATE_PROCESS"
    INITIALIZE_PROCESS = "INITIALIZE_PROCESS"
    CREATE_THREAD = "CREATE_THREAD"
    TERMINATE_THREAD = "TERMINATE_THREAD"
    RUNDOWN_PROCESS = "RUNDOWN_PROCESS"
    DEBUG_PROCESS = "DEBUG_PROCESS"
    GET_CONTEXT = "GET_CONTEXT"
    RETRIEVE_MAILBOX = "RETRIEVE_MAILBOX"
    IS_TRUSTLET_RUNNING = "IS_TRUSTLET_RUNNING"
    CREATE_SECURE_ALLOCATION = "CREATE_SECURE_ALLOCATION"
    FILL_SECURE_ALLOCATION = "FILL_SECURE_ALLOCATION"
    CREATE_SECURE_IMAGE = "CREATE_SECURE_IMAGE"
    FINALIZE_SECURE_IMAGE_HASH = "FINALIZE_SECURE_IMAGE_HASH"
    FINISH_SECURE_IMAGE_VALIDATION = "FINISH_SECURE_IMAGE_VALIDATION"
    CLOSE_SECURE_HANDLE = "CLOSE_SECURE_HANDLE"
    OBTAIN_PATCH_UNDO_TABLE = "OBTAIN_PATCH_UNDO_TABLE"
    PREPARE_FOR_HIBERNATION = "PREPARE_FOR_HIBERNATION"
    PREPARE_FOR_CRASHDUMP = "PREPARE_FOR_CRASHDUMP"
    DEBUG_READ_WRITE_MEMORY = "DEBUG_READ_WRITE_MEMORY"
    CREATE_SECURE_SECTION = "CREATE_SECURE_SECTION"
    PHASE3_INIT = "PHASE3_INIT"
    INITIALIZE_SECURE_POOL = "INITIALIZE_SECURE_POOL"
    INITIALIZE_KERNEL_CFG = "INITIALIZE_KERNEL_CFG"
    ENABLE_CFG_TARGET = "ENABLE_CFG_TARGET"
    LOAD_DRIVER = "LOAD_DRIVER"
    UNLOAD_DRIVER = "UNLOAD_DRIVER"
    MAKE_PROTECTED_PAGE_WRITABLE = "MAKE_PROTECTED_PAGE_WRITABLE"
    MAKE_PROTECTED_PAGE_EXECUTABLE = "MAKE_PROTECTED_PAGE_EXECUTABLE"
    PROTECT_KERNEL_DATA_PAGE = "PROTECT_KERNEL_DATA_PAGE"
    REGISTER_PROTECTED_PAGE = "REGISTER_PROTECTED_PAGE"
    COPY_PROTECTED_PAGE = "COPY_PROTECTED_PAGE"
    LIVEDUMP_START = "LIVEDUMP_START"
    LIVEDUMP_ADD_BUFFER = "LIVEDUMP_ADD_BUFFER"
    LIVEDUMP_ABORT = "LIVEDUMP_ABORT"
    PERIODIC = "PERIODIC"
    SHUTDOWN = "SHUTDOWN"
    BUGCHECK = "BUGCHECK"
    #: Not a Windows service: the model's do-nothing call, for the null secure-call benchmark.
    #: It uses an SSCN inside the NO_TRACING range that neither dump assigns (model choice).
    NULL = "NULL"


#: vbs-internals §2.4, column A then column B.  PROTECT_KERNEL_DATA_PAGE exists only in B (257);
#: on build A static KDP goes through REGISTER_PROTECTED_PAGE (229), the family the table lists
#: for it ("[U] mapping", vbs-internals §5.2).
_TABLE: Mapping[Service, tuple[int | None, int | None]] = MappingProxyType(
    {
        Service.PHASE4_INIT: (1, 1),
        Service.START_PROCESSOR: (2, 2),
        Service.CREATE_PROCESS: (5, 6),
        Service.INITIALIZE_PROCESS: (6, 7),
        Service.CREATE_THREAD: (7, 8),
        Service.TERMINATE_THREAD: (9, 10),
        Service.RUNDOWN_PROCESS: (10, 11),
        Service.DEBUG_PROCESS: (11, 12),
        Service.GET_CONTEXT: (13, 14),
        Service.RETRIEVE_MAILBOX: (19, 20),
        Service.IS_TRUSTLET_RUNNING: (20, 21),
        Service.CREATE_SECURE_ALLOCATION: (21, 22),
        Service.FILL_SECURE_ALLOCATION: (22, 23),
        Service.CREATE_SECURE_IMAGE: (24, 25),
        Service.FINALIZE_SECURE_IMAGE_HASH: (25, 26),
        Service.FINISH_SECURE_IMAGE_VALIDATION: (26, 27),
        Service.CLOSE_SECURE_HANDLE: (29, 30),
        Service.DEBUG_READ_WRITE_MEMORY: (38, 39),
        # LIVEDUMP_QUERY_SECONDARYDATA_SIZE, _START, _ADD_BUFFER, _SETUP_BUFFER, _FINALIZE, _ABORT,
        # _CAPTURE_PROCESS are 47-53 (A) and 53-59 (B), in that order (vbs-internals §2.4).
        Service.LIVEDUMP_START: (48, 54),
        Service.LIVEDUMP_ADD_BUFFER: (49, 55),
        Service.LIVEDUMP_ABORT: (52, 58),
        Service.CREATE_SECURE_SECTION: (57, 63),
        Service.OBTAIN_PATCH_UNDO_TABLE: (None, 69),
        Service.NULL: (190, 190),
        Service.PHASE3_INIT: (208, 208),
        Service.PERIODIC: (209, 209),
        Service.INITIALIZE_SECURE_POOL: (None, 214),
        # INITIALIZE_KERNEL_CFG: 213 (A) / 215 (B).  Public decompilations of ntoskrnl show
        # VslInitializeSecureKernelCfg issuing 0xD7 = 215 in one build and 214 in another (the
        # numbers move between builds, as the table says).  ENABLE_CFG_TARGET: 217 (A) / 218 (B).
        Service.INITIALIZE_KERNEL_CFG: (213, 215),
        Service.LOAD_DRIVER: (214, 216),
        Service.UNLOAD_DRIVER: (215, 217),
        Service.ENABLE_CFG_TARGET: (217, 218),
        Service.REGISTER_PROTECTED_PAGE: (229, 245),
        Service.COPY_PROTECTED_PAGE: (228, 244),
        Service.MAKE_PROTECTED_PAGE_WRITABLE: (230, 247),
        Service.MAKE_PROTECTED_PAGE_EXECUTABLE: (231, 248),
        Service.PROTECT_KERNEL_DATA_PAGE: (None, 257),
        Service.PREPARE_FOR_HIBERNATION: (239, 259),
        Service.PREPARE_FOR_CRASHDUMP: (240, 260),
        Service.SHUTDOWN: (242, 262),
        Service.BUGCHECK: (1792, 1792),
    }
)


class ServiceTable:
    """Numbers ↔ services for one build."""

    def __init__(self, build: str) -> None:
        if build not in ("A", "B"):
            raise ValueError(f"unknown build {build!r}")
        column = 0 if build == "A" else 1
        self.build = build
        self.number: dict[Service, int] = {}
        self.service: dict[int, Service] = {}
        for service, numbers in _TABLE.items():
            value = numbers[column]
            if value is not None:
                self.number[service] = value
                self.service[value] = service

    def __contains__(self, service: Service) -> bool:
        return service in self.number
