"""The Secure Kernel: VTL1 ring 0 (securekernel.exe, skci.dll) — vbs-internals §1, §2, §5."""
