"""The NT kernel and VTL0 processes (VTL0): vbs-internals §1.1, §2, §5."""
