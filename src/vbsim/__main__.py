"""``python -m vbsim``: the same command line as the ``vbsim`` script."""

import sys

from vbsim.cli.main import main

sys.exit(main())
