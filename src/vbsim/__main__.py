"""``python -m vbsim``: the same command line as the ``vbsim`` script."""

from vbsim.cli.main import app

app(prog_name="vbsim")
