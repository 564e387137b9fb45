"""The names of SKCI's admission checks, in the order it runs them (vbs-internals Appendix A
item 6).  Kept apart from the checks themselves so that light modules (the CLI) can name them
without loading the PE and crypto libraries."""

CHECKS = (
    "format",
    "tpolicy",
    "policy-export",
    "trustlet-id",
    "signature",
    "revocation",
    "allow-list",
)
