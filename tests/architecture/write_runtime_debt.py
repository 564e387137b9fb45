"""Write the runtime half of ``known_debt.json``: the platform references kernel images hold and
the names guest code reaches past the ``Cpu`` surface (run from the repository root with
``PYTHONPATH=src:tests python tests/architecture/write_runtime_debt.py``)."""

from __future__ import annotations

import io
import json

from rich.console import Console

from architecture import debt
from architecture.test_one_rule import _all_image_references
from vbsim import demo
from vbsim.attacks.catalogue import SCENARIOS
from vbsim.attacks.model import PRESET_ORDER
from vbsim.attacks.runner import run
from vbsim.hw import cpu as cpu_module


def main() -> None:
    data = debt.load()
    data["image_references"] = list(_all_image_references())
    cpu_module.LEAKS.clear()
    for scenario in SCENARIOS:
        for name in PRESET_ORDER:
            run(scenario, name)
    demo.run(Console(file=io.StringIO(), width=120))
    data["leaks"] = sorted(cpu_module.LEAKS)
    debt.DEBT_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{len(data['image_references'])} image reference(s), leaks {data['leaks']}")


if __name__ == "__main__":
    main()
