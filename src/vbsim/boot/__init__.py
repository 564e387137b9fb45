"""The boot chain: firmware, winload, hypervisor launch, Secure Kernel and NT (vbs-internals §1)."""
