"""Campaigns: soak and fuzz runs as independent jobs on an engine (a local process pool or Dask
distributed), their records kept in a results directory a researcher can show and resume.

- :mod:`.jobs` — a soak job: ``(campaign seed, job index, preset, config) -> records``;
- :mod:`.engine` — where jobs run (``local``, ``dask``);
- :mod:`.soak` — scheduling a soak campaign, resuming one;
- :mod:`.results` — the results directory (manifest, JSON lines, summary);
- :mod:`.shrink`, :mod:`.groups` — failing programs shrunk, identical failures grouped;
- :mod:`.show` — ``vbsim campaign show DIR``.
"""

from __future__ import annotations

from vbsim.campaign.engine import ENGINES, DaskEngine, Engine, EngineError, LocalEngine, make_engine
from vbsim.campaign.jobs import SoakConfig, job_seed, run_job

__all__ = [
    "ENGINES",
    "DaskEngine",
    "Engine",
    "EngineError",
    "LocalEngine",
    "SoakConfig",
    "job_seed",
    "make_engine",
    "run_job",
]
