"""``python -m vbsim.fuzz.ci``: every fuzz target, briefly, for CI.

Runs each target with the random driver for its share of ``--seconds`` (default 5 s in total)
from a fixed seed, and exits 1 if any input raised an unexpected exception (the input is saved
under the fuzz directory's ``crashes/``, see :func:`vbsim.fuzz.targets.corpus_dir`).  With
``--engine atheris`` each target runs coverage-guided in its own process instead (libFuzzer
exits the process it runs in).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from vbsim.fuzz.engine import atheris_available, run_random
from vbsim.fuzz.targets import targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vbsim.fuzz.ci", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="total time for all targets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=("random", "atheris"), default="random")
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    options = parser.parse_args(argv)
    names = options.targets or list(targets())
    share = options.seconds / max(1, len(names))
    failed = False
    for name in names:
        if options.engine == "atheris":
            if not atheris_available():
                print("atheris is not installed (pip install atheris)", file=sys.stderr)
                return 2
            command = [sys.executable, "-m", "vbsim.fuzz", name, "--seconds", str(share)]
            command += ["--engine", "atheris"]
            code = subprocess.call(command)
            print(f"{name}: atheris exit {code}")
            failed |= code != 0
            continue
        result = run_random(name, share, seed=options.seed)
        print(
            f"{name}: {result.iterations} inputs in {result.seconds:.1f} s "
            f"({result.rate:.0f}/s), {len(result.crashes)} crash(es)"
        )
        for crash in result.crashes:
            failed = True
            print(f"  {crash.error}\n  input saved to {crash.path}\n{crash.trace}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
