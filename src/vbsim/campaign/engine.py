"""Where campaign jobs run: a process pool on this machine, or Dask distributed.

Both engines offer the same three calls (:meth:`Engine.submit`, :meth:`Engine.wait_any`,
:meth:`Engine.close`); a job is a plain function of picklable arguments and returns a picklable
result, so nothing but the engine carries work and results (no shared file system).

- ``local`` (the default, no extra dependency): a :class:`~concurrent.futures.ProcessPoolExecutor`
  started with *forkserver* (or spawn), never fork: a forked worker would inherit every guest-RAM
  mapping of the caller (a test run holds many), and fork then fails with ENOMEM under
  overcommit accounting.  With one worker the jobs run in this process (no start-up cost, and
  what a test monkeypatches applies).
- ``dask`` (``pip install 'vbsim[cluster]'``): a ``distributed.Client`` on the scheduler at
  ``scheduler`` (a running ``dask scheduler``), or on a ``LocalCluster`` of ``workers`` processes
  with one thread each (the model is pure Python: threads would share one GIL).  Workers of a
  remote cluster need vbsim installed (the same version: jobs are sent by reference to
  :func:`vbsim.campaign.jobs.run_job`), nothing else — no shared directory.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

ENGINES = ("local", "dask")


class EngineError(RuntimeError):
    """The engine cannot start (dask missing, scheduler unreachable...)."""


class Engine:
    name = "engine"
    workers = 1
    dashboard: str | None = None
    #: Whether a submitted job's future may be passed as another job's argument (the engine
    #: then starts the dependent job when its inputs exist, without a round trip through the
    #: caller): Dask resolves futures in arguments; a process pool does not.
    chains = False
    #: seconds spent starting the engine (pool or cluster up, client connected)
    start_seconds = 0.0

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def wait_any(self, pending: list[Any]) -> tuple[list[Any], list[Any]]:
        """(done, still pending), at least one done."""
        raise NotImplementedError

    @staticmethod
    def result(future: Any) -> Any:
        return future.result()

    def cancel(self, pending: list[Any]) -> None:
        """Drop jobs not yet finished (best effort: a running one may still finish)."""
        for future in pending:
            cancel = getattr(future, "cancel", None)
            if cancel is not None:
                cancel()

    def close(self) -> None:
        return None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Done:
    """A finished inline job, shaped like a future."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


class LocalEngine(Engine):
    name = "local"

    def __init__(self, workers: int = 1) -> None:
        started = time.perf_counter()
        self.workers = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None
        if self.workers > 1:
            methods = multiprocessing.get_all_start_methods()
            method = "forkserver" if "forkserver" in methods else "spawn"
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context(method)
            )
        self.start_seconds = time.perf_counter() - started

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._pool is None:
            return _Done(fn(*args))
        return self._pool.submit(fn, *args)

    def wait_any(self, pending: list[Any]) -> tuple[list[Any], list[Any]]:
        inline = [f for f in pending if isinstance(f, _Done)]
        if inline:
            return inline, [f for f in pending if not isinstance(f, _Done)]
        futures: list[Future[Any]] = pending
        done, rest = wait_futures(futures, return_when=FIRST_COMPLETED)
        return [f for f in pending if f in done], [f for f in pending if f in rest]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def dask_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("distributed") is not None


class DaskEngine(Engine):
    name = "dask"
    chains = True

    def __init__(self, workers: int = 2, scheduler: str | None = None) -> None:
        if not dask_available():
            raise EngineError(
                "the dask engine needs dask distributed: pip install 'vbsim[cluster]'"
            )
        started = time.perf_counter()
        import importlib

        # optional, and only partly typed: used as Any (CI's mypy runs without the extra)
        distributed: Any = importlib.import_module("distributed")
        Client, LocalCluster = distributed.Client, distributed.LocalCluster
        self._wait = distributed.wait

        self._cluster: Any = None
        # The model is pure Python and single-threaded: one process per worker, one thread each.
        try:
            if scheduler:
                self._client: Any = Client(scheduler, timeout="20s")
            else:
                self._cluster = LocalCluster(
                    n_workers=max(1, workers),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",
                    silence_logs=40,
                )
                self._client = Client(self._cluster)
        except OSError as error:
            if self._cluster is not None:
                self._cluster.close()
            raise EngineError(f"cannot reach the dask scheduler {scheduler!r}: {error}") from error
        self.dashboard = self._client.dashboard_link
        info = self._client.scheduler_info()
        self.workers = max(1, len(info.get("workers", {})) or workers)
        self.start_seconds = time.perf_counter() - started

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        # pure=False: the same arguments submitted twice (a resumed job) must run again
        return self._client.submit(fn, *args, pure=False)

    def wait_any(self, pending: list[Any]) -> tuple[list[Any], list[Any]]:
        done, rest = self._wait(pending, return_when="FIRST_COMPLETED")
        return [f for f in pending if f in done], [f for f in pending if f in rest]

    def close(self) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def make_engine(name: str, workers: int, scheduler: str | None = None) -> Engine:
    if name == "local":
        if scheduler:
            raise EngineError("--scheduler needs --engine dask")
        return LocalEngine(workers)
    if name == "dask":
        return DaskEngine(workers, scheduler)
    raise EngineError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
