"""A TLFS conformance suite in the style of kvm-unit-tests' ``x86/hyperv_vsm.c`` and OpenVMM's
OpenTMK tests: the cases as data (:mod:`.cases`), run against the model by :mod:`.runner`, from
the tests (``tests/conformance``) and from ``vbsim conformance``."""
