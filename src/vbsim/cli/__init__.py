"""The ``vbsim`` command line."""
