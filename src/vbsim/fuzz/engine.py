"""Running fuzz targets: coverage-guided with atheris (libFuzzer) when it is installed, or a plain
random mutation driver that needs nothing.

The random driver starts from the target's seeds (and the saved corpus, if any), mutates them
(bit flips, interesting bytes and integers, insertions, deletions, splices) and runs each input;
an input that reaches call edges of the model no input reached before (:class:`Coverage`) joins
the corpus, in memory and under the corpus directory, so the corpus grows as with atheris;
the first unexpected exception stops it and is reported with the input that caused it (saved
under ``crashes/`` next to the corpus, so it can be replayed with ``vbsim fuzz TARGET --replay``).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import importlib.util
import random
import sys
import time
import traceback
import types
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vbsim.fuzz.targets import Target, corpus_dir, get

_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF)
_INTERESTING_INTS = (0, 1, 0xFFFF, 0x1000, 0xFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 63, (1 << 64) - 1)


@dataclass
class Crash:
    target: str
    data: bytes
    error: str
    trace: str
    path: Path | None = None
    signature: str = ""


@dataclass
class FuzzResult:
    target: str
    engine: str
    iterations: int = 0
    seconds: float = 0.0
    crashes: list[Crash] = field(default_factory=list)
    #: inputs that reached new call edges and joined the corpus
    grown: int = 0

    @property
    def rate(self) -> float:
        return self.iterations / self.seconds if self.seconds else 0.0


def mutate(rng: random.Random, data: bytes, corpus: list[bytes], max_len: int) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        choice = rng.randrange(8)
        if choice == 0 and out:
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif choice == 1 and out:
            out[rng.randrange(len(out))] = rng.choice(_INTERESTING)
        elif choice == 2 and len(out) >= 8:
            i = rng.randrange(len(out) - 7)
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(_INTERESTING_INTS) & ((1 << (8 * width)) - 1)
            out[i : i + width] = value.to_bytes(width, "little")
        elif choice == 3:
            i = rng.randrange(len(out) + 1)
            out[i:i] = rng.randbytes(rng.randint(1, 16))
        elif choice == 4 and out:
            i = rng.randrange(len(out))
            del out[i : i + rng.randint(1, 32)]
        elif choice == 5 and corpus:
            other = rng.choice(corpus)
            if other:
                i, j = rng.randrange(len(out) + 1), rng.randrange(len(other))
                out[i:] = other[j : j + rng.randint(1, 256)] + out[i:]
        elif choice == 6 and out:
            i = rng.randrange(len(out))
            out[i : i + 1] = bytes([out[i]]) * rng.randint(1, 64)
        else:
            out += rng.randbytes(rng.randint(1, 8))
    return bytes(out[:max_len])


def load_corpus(target: Target) -> list[bytes]:
    corpus = [seed[: target.max_len] for seed in target.seeds()]
    directory = corpus_dir(target.name)
    if directory.is_dir():
        for path in sorted(directory.iterdir())[:500]:
            if path.is_file():
                corpus.append(path.read_bytes()[: target.max_len])
    return corpus


def inputs(rng: random.Random, corpus: list[bytes], max_len: int) -> Iterator[bytes]:
    """Seeds first, then mutants, then now and then a fresh random input."""
    yield from corpus
    while True:
        if not corpus or rng.randrange(16) == 0:
            yield rng.randbytes(rng.randint(0, min(max_len, 512)))
        else:
            yield mutate(rng, rng.choice(corpus), corpus, max_len)


def save_crash(crash: Crash) -> Path:
    directory = corpus_dir(crash.target).parent / "crashes" / crash.target
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"crash-{hashlib.sha1(crash.data).hexdigest()[:16]}"
    path.write_bytes(crash.data)
    return path


# -- feedback, signatures, minimisation ------------------------------------------------------
class Coverage:
    """Call-edge coverage of the model for the random driver: which (caller, callee) pairs of
    vbsim functions an input reached, as stable numbers (CRC-32 of the names, so features found
    in different processes merge).  A ``sys.settrace`` hook on call events only (no line
    events: each call costs one Python callback)."""

    def __init__(self) -> None:
        self._names: dict[tuple[int, int], int | None] = {}
        self._codes: dict[int, types.CodeType] = {}  # keeps the ids above valid
        self._pairs: set[tuple[int, int]] = set()

    def _trace(self, frame: types.FrameType, event: str, arg: object) -> None:
        if event == "call":
            back = frame.f_back
            if back is not None:
                code = frame.f_code
                self._pairs.add((id(back.f_code), id(code)))
                self._codes.setdefault(id(code), code)
        return None

    @contextlib.contextmanager
    def collect(self) -> Iterator[set[int]]:
        features: set[int] = set()
        self._pairs = set()
        previous = sys.gettrace()
        sys.settrace(self._trace)
        try:
            yield features
        finally:
            sys.settrace(previous)
            features.update(self._features(self._pairs))

    def _features(self, pairs: set[tuple[int, int]]) -> set[int]:
        out: set[int] = set()
        codes = self._codes
        for pair in pairs:
            if pair not in self._names:
                caller, callee = codes.get(pair[0]), codes.get(pair[1])
                name = None
                if callee is not None and "vbsim" in callee.co_filename:
                    where = f"{caller.co_qualname if caller else '?'}>{callee.co_qualname}"
                    name = zlib.crc32(
                        f"{callee.co_filename.rsplit('vbsim', 1)[-1]}:{where}".encode()
                    )
                self._names[pair] = name
            value = self._names[pair]
            if value is not None:
                out.add(value)
        return out


def signature(error: BaseException, trace: types.TracebackType | None) -> str:
    """A crash's identity: its exception type and the innermost model frames (file:function),
    so one bug reached by a thousand inputs is one crash."""
    frames = [
        f"{Path(f.filename).stem}:{f.name}"
        for f in traceback.extract_tb(trace)
        if "vbsim" in f.filename and "/fuzz/" not in f.filename
    ]
    return f"{type(error).__name__} at {' < '.join(reversed(frames[-3:])) or '?'}"


def _crash_signature(target: Target, data: bytes) -> str | None:
    try:
        target.one(data)
    except Exception as error:
        return signature(error, error.__traceback__)
    return None


def minimise(target: Target, data: bytes, sig: str, budget: int = 300) -> bytes:
    """The shortest input found that still crashes with ``sig`` (chunk deletion, halving)."""
    best = data
    chunk = max(1, len(best) // 2)
    spent = 0
    while chunk >= 1 and spent < budget:
        at, shrunk = 0, False
        while at < len(best) and spent < budget:
            candidate = best[:at] + best[at + chunk :]
            spent += 1
            if _crash_signature(target, candidate) == sig:
                best, shrunk = candidate, True
            else:
                at += chunk
        if not shrunk:
            chunk //= 2
    return best


@dataclass
class RoundResult:
    """What one fuzzer sends back after a round: the inputs that reached new features (with
    their features), its crashes (deduplicated by signature, minimised), and counts."""

    worker: int
    iterations: int = 0
    seconds: float = 0.0
    new: list[tuple[bytes, list[int]]] = field(default_factory=list)
    crashes: list[tuple[str, bytes, str, str, int]] = field(default_factory=list)
    corpus_in: int = 0


def _loop(
    target: Target,
    rng: random.Random,
    corpus: list[bytes],
    seen: set[int],
    known: set[str],
    *,
    seconds: float,
    max_iterations: int | None,
    coverage: bool,
    fresh_first: bool,
    on_new: Callable[[bytes, set[int]], None],
    on_crash: Callable[[str, bytes, BaseException, str], bool],
) -> tuple[int, float]:
    """The random driver's loop; returns (iterations, seconds)."""
    tracker = Coverage() if coverage else None
    start = time.perf_counter()
    iterations = 0
    source = inputs(rng, corpus, target.max_len) if fresh_first else _mutants(rng, corpus, target)
    for data in source:
        if max_iterations is not None and iterations >= max_iterations:
            break
        if time.perf_counter() - start >= seconds:
            break
        iterations += 1
        try:
            if tracker is None:
                target.one(data)
            else:
                with tracker.collect() as features:
                    target.one(data)
                if not features <= seen:
                    seen.update(features)
                    corpus.append(data)  # the corpus grows: later mutants build on it
                    on_new(data, features)
        except Exception as error:  # a finding: report it with its input
            sig = signature(error, error.__traceback__)
            if sig in known:
                continue
            known.add(sig)
            if on_crash(sig, data, error, traceback.format_exc()):
                break
    return iterations, time.perf_counter() - start


def _mutants(rng: random.Random, corpus: list[bytes], target: Target) -> Iterator[bytes]:
    """Like :func:`inputs` without replaying the corpus first (a later campaign round)."""
    source = inputs(rng, corpus, target.max_len)
    for _ in range(len(corpus)):
        next(source)
    yield from source


def run_random(
    name: str,
    seconds: float,
    *,
    seed: int = 0,
    max_iterations: int | None = None,
    save: bool = True,
    stop_on_crash: bool = True,
    coverage: bool = True,
) -> FuzzResult:
    """Fuzz ``name`` with the random driver for ``seconds`` (or ``max_iterations``).  With
    ``coverage`` an input reaching new call edges of the model joins the corpus (saved under
    the corpus directory when ``save``)."""
    target = get(name)
    rng = random.Random(seed)
    result = FuzzResult(name, "random")
    corpus = load_corpus(target)
    directory = corpus_dir(name)

    def on_new(data: bytes, features: set[int]) -> None:
        result.grown += 1
        if save:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"input-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)

    def on_crash(sig: str, data: bytes, error: BaseException, trace: str) -> bool:
        crash = Crash(name, data, f"{type(error).__name__}: {error}", trace, signature=sig)
        if save:
            crash.path = save_crash(crash)
        result.crashes.append(crash)
        return stop_on_crash

    try:
        result.iterations, result.seconds = _loop(
            target,
            rng,
            corpus,
            set(),
            set(),
            seconds=seconds,
            max_iterations=max_iterations,
            coverage=coverage,
            fresh_first=True,
            on_new=on_new,
            on_crash=on_crash,
        )
    finally:
        target.close()
    return result


def fuzz_round(
    name: str,
    worker: int,
    seed: int,
    corpus: list[bytes],
    seen: list[int],
    known: list[str],
    seconds: float,
    max_iterations: int | None,
    first: bool,
) -> RoundResult:
    """One round of one fuzzer in a campaign: everything arrives as arguments and leaves as the
    result (workers need no shared file system)."""
    target = get(name)
    result = RoundResult(worker, corpus_in=len(corpus))
    local = list(corpus) or [seed_[: target.max_len] for seed_ in target.seeds()]
    known_set = set(known)

    def on_new(data: bytes, features: set[int]) -> None:
        result.new.append((data, sorted(features)))

    def on_crash(sig: str, data: bytes, error: BaseException, trace: str) -> bool:
        small = minimise(target, data, sig)
        result.crashes.append((sig, small, f"{type(error).__name__}: {error}", trace, len(data)))
        return False

    try:
        result.iterations, result.seconds = _loop(
            target,
            random.Random(seed),
            local,
            set(seen),
            known_set,
            seconds=seconds,
            max_iterations=max_iterations,
            coverage=True,
            fresh_first=first,
            on_new=on_new,
            on_crash=on_crash,
        )
    finally:
        target.close()
    return result


def replay(name: str, data: bytes) -> Crash | None:
    """Run one input; the crash it causes, if any."""
    target = get(name)
    try:
        target.one(data[: target.max_len])
    except Exception as error:
        return Crash(
            name,
            data,
            f"{type(error).__name__}: {error}",
            traceback.format_exc(),
            signature=signature(error, error.__traceback__),
        )
    finally:
        target.close()
    return None


def atheris_available() -> bool:
    return importlib.util.find_spec("atheris") is not None


#: What coverage is measured on: the model and the parsers it relies on (not the harness).
_INSTRUMENTED = ("vbsim", "pefile", "asn1crypto", "tomllib")
_HARNESS = ("vbsim.fuzz", "vbsim.cli")


def _ours(function: types.FunctionType) -> bool:
    module = getattr(function, "__module__", None) or ""
    return module.split(".")[0] in _INSTRUMENTED and not module.startswith(_HARNESS)


def _instrument(atheris: Any, target: Target) -> None:
    """Instrument the model for coverage: modules the target imports lazily as they load (its
    seeds import them), and functions of modules already loaded in place.  (``instrument_all``
    would do every loaded library too, which costs half a minute at start-up.)"""
    loaded = [f for f in gc.get_objects() if isinstance(f, types.FunctionType) and _ours(f)]
    with atheris.instrument_imports(include=list(_INSTRUMENTED)):
        for seed in target.seeds()[:4]:
            with contextlib.suppress(Exception):  # a crashing seed is libFuzzer's to report
                target.one(seed[: target.max_len])
    for function in loaded:
        with contextlib.suppress(Exception):  # some code objects cannot be instrumented
            atheris.instrument_func(function)


#: libFuzzer's own default RSS limit (-rss_limit_mb=2048): what a target may grow by.
RSS_HEADROOM_MB = 2048


def rss_limit_mb() -> int:
    """libFuzzer's RSS limit, counted from what this process already holds.  libFuzzer reads
    the peak RSS from getrusage, and Linux carries the peak across execve (exec_mmap saves the
    old address space's high-water mark in the process's maxrss), so a fuzzer started from a
    big process (a test run that booted a thousand machines) would start "out of memory"."""
    import resource

    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux
    return inherited + RSS_HEADROOM_MB


def run_atheris(name: str, seconds: float, extra: list[str] | None = None) -> None:
    """Coverage-guided fuzzing with atheris/libFuzzer.  Does not return: libFuzzer exits the
    process (status 0 when the time is up, non-zero on a crash, with the input saved)."""
    atheris: Any = importlib.import_module("atheris")  # optional; it has no type stubs
    target = get(name)
    directory = corpus_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    crashes = directory.parent / "crashes" / name
    crashes.mkdir(parents=True, exist_ok=True)
    for index, seed in enumerate(target.seeds()):
        path = directory / f"seed-{index}"
        if not path.exists():
            path.write_bytes(seed[: target.max_len])
    _instrument(atheris, target)
    argv = [
        sys.argv[0],
        f"-max_total_time={max(1, int(seconds))}",
        f"-max_len={target.max_len}",
        f"-rss_limit_mb={rss_limit_mb()}",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        *(extra or []),
        str(directory),
    ]

    def one(data: bytes) -> None:
        target.one(data)

    atheris.Setup(argv, one)
    atheris.Fuzz()
