"""Running fuzz targets: coverage-guided with atheris (libFuzzer) when it is installed, or a plain
random mutation driver that needs nothing.

The random driver starts from the target's seeds (and the saved corpus, if any), mutates them
(bit flips, interesting bytes and integers, insertions, deletions, splices) and runs each input;
the first unexpected exception stops it and is reported with the input that caused it (saved
under ``crashes/`` next to the corpus, so it can be replayed with ``vbsim fuzz TARGET --replay``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import random
import sys
import time
import traceback
import types
from collections.abc import Iterator
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


@dataclass
class FuzzResult:
    target: str
    engine: str
    iterations: int = 0
    seconds: float = 0.0
    crashes: list[Crash] = field(default_factory=list)

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
    import hashlib

    path = directory / f"crash-{hashlib.sha1(crash.data).hexdigest()[:16]}"
    path.write_bytes(crash.data)
    return path


def run_random(
    name: str,
    seconds: float,
    *,
    seed: int = 0,
    max_iterations: int | None = None,
    save: bool = True,
    stop_on_crash: bool = True,
) -> FuzzResult:
    """Fuzz ``name`` with the random driver for ``seconds`` (or ``max_iterations``)."""
    target = get(name)
    rng = random.Random(seed)
    result = FuzzResult(name, "random")
    corpus = load_corpus(target)
    start = time.perf_counter()
    try:
        for data in inputs(rng, corpus, target.max_len):
            if max_iterations is not None and result.iterations >= max_iterations:
                break
            if time.perf_counter() - start >= seconds:
                break
            result.iterations += 1
            try:
                target.one(data)
            except Exception as error:  # a finding: report it with its input
                crash = Crash(
                    name, data, f"{type(error).__name__}: {error}", traceback.format_exc()
                )
                if save:
                    crash.path = save_crash(crash)
                result.crashes.append(crash)
                if stop_on_crash:
                    break
    finally:
        target.close()
        result.seconds = time.perf_counter() - start
    return result


def replay(name: str, data: bytes) -> Crash | None:
    """Run one input; the crash it causes, if any."""
    target = get(name)
    try:
        target.one(data[: target.max_len])
    except Exception as error:
        return Crash(name, data, f"{type(error).__name__}: {error}", traceback.format_exc())
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
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        *(extra or []),
        str(directory),
    ]

    def one(data: bytes) -> None:
        target.one(data)

    atheris.Setup(argv, one)
    atheris.Fuzz()
