"""Isolated User Mode inside the Secure Kernel: trustlet admission (SKCI), secure processes, and
the system-call path from VTL1 user mode (vbs-internals §2.5, §2.6, §3, §4)."""
