"""``python -m vbsim.fuzz TARGET --seconds N [--engine random|atheris] [--replay FILE]``."""

from __future__ import annotations

import sys

from vbsim.cli.fuzz_cmd import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
