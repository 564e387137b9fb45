"""Write the runtime half of ``known_debt.json``: the platform references kernel images hold (run
from the repository root with
``PYTHONPATH=src:tests python tests/architecture/write_runtime_debt.py``)."""

from __future__ import annotations

import json

from architecture import debt
from architecture.test_one_rule import _all_image_references


def main() -> None:
    data = debt.load()
    data["image_references"] = list(_all_image_references())
    data.pop("leaks", None)  # no fallback is left to record reaches past the Cpu surface
    debt.DEBT_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{len(data['image_references'])} image reference(s)")


if __name__ == "__main__":
    main()
