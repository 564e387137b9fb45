"""vbsim: an executable model of Windows Virtualization-Based Security."""

__version__ = "0.1.0"
