"""``vbsim bench`` / ``python -m vbsim.bench``: medians over repeated runs, never timed assertions.

Each metric is a function that performs one measurement and returns one number; ``run`` repeats
it and reports the median next to the issue's target.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vbsim.guest.bare import MON_NULL, boot_bare, monitor_call
from vbsim.hw.code import guest_code
from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.x86 import PAGE_SIZE, Pte
from vbsim.machine import Machine


@dataclass(frozen=True)
class Metric:
    measure: Callable[[], float]
    target: float
    higher_is_better: bool
    unit: str
    #: at most this many repetitions (a long measurement), or None (as asked)
    repeat: int | None = None
    #: why the metric cannot run here (a missing optional dependency), or None
    skip: Callable[[], str | None] | None = None

    def meets(self, value: float) -> bool:
        return value >= self.target if self.higher_is_better else value <= self.target

    @property
    def target_text(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.target:g} {self.unit}"


def _timed_rate(step: Callable[[], object], seconds: float = 0.25) -> float:
    """Operations per second of ``step`` over about ``seconds``."""
    count = 0
    batch = 1000
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            step()
        count += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def vtl_roundtrip_us() -> float:
    """VTL0 → VTL1 → VTL0: a null VTL call and return on one VP (bare monitor)."""
    machine = Machine(ram_size=64 << 20)
    _, _, failures = boot_bare(machine)
    assert not failures, failures
    vp = machine.bsp
    cpu = vp.cpu
    rate = _timed_rate(lambda: monitor_call(cpu, MON_NULL))
    machine.close()
    return 1e6 / rate


def _read_setup(pages: int) -> tuple[Machine, list[int]]:
    machine = Machine(ram_size=64 << 20)
    vp = machine.bsp
    tables = PageTables(PhysAccess.direct(machine.ram, "bench"))
    vas = []
    for i in range(pages):
        frame = machine.ram.frames.alloc("bench")
        va = 0x40_0000 + i * PAGE_SIZE
        tables.map(va, frame * PAGE_SIZE, int(Pte.RW | Pte.NX))
        vas.append(va + 8)
    vp.p.cr3 = tables.root
    return machine, vas


def read8_tlb_hit_per_s() -> float:
    machine, vas = _read_setup(1)
    vp, va = machine.bsp, vas[0]
    vp.read_u64(va)
    rate = _timed_rate(lambda: vp.read_u64(va))
    machine.close()
    return rate


def read8_tlb_miss_per_s() -> float:
    """Each read misses the TLB (INVLPG first, counted in the cost) and walks 4 levels, every
    paging-structure read checked against SLAT, then SLAT on the final GPA."""
    machine, vas = _read_setup(256)
    vp = machine.bsp
    index = [0]

    def step() -> None:
        va = vas[index[0] & 255]
        index[0] += 1
        vp.invlpg(va)
        vp.read_u64(va)

    rate = _timed_rate(step)
    machine.close()
    return rate


def _rss_probe() -> float:
    """Run in a child: a 4 GiB machine with VTL1 enabled, 1,000 pages touched by VTL0."""
    machine = Machine(ram_size=4 << 30)
    kernel, _, failures = boot_bare(machine)
    assert not failures, failures
    vp = machine.bsp
    va, _ = kernel.space.alloc_data(1000)
    for i in range(1000):
        vp.write_u64(va + i * PAGE_SIZE, i + 1)
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def ram_rss_mib() -> float:
    out = subprocess.run(
        [sys.executable, "-m", "vbsim.bench", "--rss-probe"],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


def boot_ms() -> float:
    """Boot the ``vbs`` preset end to end (images are cached after the first boot, as a real
    machine's disk is read once; the PKI is generated once per user)."""
    from vbsim.boot.chain import boot
    from vbsim.policy import preset

    policy = preset("vbs")
    boot(policy)  # warm the image cache
    start = time.perf_counter()
    system = boot(policy)
    elapsed = (time.perf_counter() - start) * 1000
    assert system.booted and system.vbs_running, system.halted
    return elapsed


def _booted(name: str = "vbs") -> Any:
    from vbsim.boot.chain import boot
    from vbsim.policy import preset

    system = boot(preset(name))
    system.trace.record(False)
    return system


def securecall_null_us() -> float:
    """A null secure call: NT's Vsl stub → VTL call → SK dispatch → VTL return → NT."""
    from vbsim.sk.sscn import Service

    system = _booted()
    vp, vsl = system.machine.bsp, system.nt.vsl
    rate = _timed_rate(lambda: vsl.call(vp.cpu, Service.NULL))
    system.machine.close()
    return 1e6 / rate


@guest_code("bench.syscall_loop")
def _syscall_loop(vp: Any, count: int) -> float:
    from vbsim.nt.syscalls import syscall

    start = time.perf_counter()
    for _ in range(count):
        syscall(vp, "NtTestAlert")
    return time.perf_counter() - start


def syscall_null_us() -> float:
    """A null system call from a VTL0 user process: syscall → LSTAR dispatcher → sysret."""
    from vbsim.nt.process import Token

    system = _booted()
    nt, vp = system.nt, system.machine.bsp
    process = nt.create_process(vp.cpu, "bench.exe", Token("user"))
    entry = nt.map_code(vp.cpu, process, ["bench.syscall_loop"])["bench.syscall_loop"]
    count = 20000
    run = nt.run_user(vp.cpu, process, entry, count)
    system.machine.close()
    return float(run.returned) / count * 1e6


def trustlet_admit_ms() -> float:
    """CREATE_PROCESS of a 64 KiB signed trustlet: NT copies the image into section pages, the SK
    captures it, runs SKCI (parse, .tPolicy, Authenticode digest and chain), protects and re-hashes
    the pages and builds the address space."""
    from vbsim.boot.trustlets import trustlet_image
    from vbsim.ium.images import LSAISO
    from vbsim.nt.secure_process import create_secure_process

    image = trustlet_image(LSAISO, size=64 * 1024)
    system = _booted()
    nt, vp = system.nt, system.machine.bsp
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        status, _process = create_secure_process(nt, vp.cpu, LSAISO, 1, image=image)
        samples.append((time.perf_counter() - start) * 1000)
        assert status == 0, hex(status)
    system.machine.close()
    return statistics.median(samples)


@guest_code("bench.ium_loop")
def _ium_loop(vp: Any, message: int, length: int, reply: int) -> int:
    from vbsim.ium.iumbase import secure_syscall

    count = vp.read_u32(message)
    start = time.perf_counter_ns()
    for _ in range(count):
        secure_syscall(vp, "IumGetIdk", 0, reply, 32)
    elapsed = time.perf_counter_ns() - start
    vp.write(reply, elapsed.to_bytes(8, "little"))
    return 8


def ium_secure_syscall_us() -> float:
    """A secure system call from a trustlet (IumGetIdk): syscall at VTL1 CPL3 → the SK's secure
    service table → key derivation → sysret; no VTL transition."""
    from vbsim.boot.trustlets import trustlet_image
    from vbsim.nt.secure_process import create_secure_process, run_trustlet

    system = _booted()
    nt, vp = system.nt, system.machine.bsp
    image = trustlet_image("BenchIum.exe", trustlet_id=5, entry="bench.ium_loop")
    status, process = create_secure_process(nt, vp.cpu, "BenchIum.exe", 5, image=image)
    assert status == 0 and process is not None, hex(status)
    count = 5000
    run = run_trustlet(nt, vp.cpu, process, count.to_bytes(4, "little"))
    system.machine.close()
    return int.from_bytes(run.reply[:8], "little") / count / 1000


def catalogue_s() -> float:
    """Every catalogue scenario under every preset (fresh machine per run)."""
    from vbsim.attacks.catalogue import SCENARIOS
    from vbsim.attacks.runner import run_catalogue

    start = time.perf_counter()
    run_catalogue(SCENARIOS)
    return time.perf_counter() - start


def matrix_ms() -> float:
    """The live 4x4 access matrix under the vbs preset (boot included; images cached)."""
    from vbsim.attacks.matrix import access_matrix

    access_matrix("vbs")  # warm the image caches
    start = time.perf_counter()
    access_matrix("vbs")
    return (time.perf_counter() - start) * 1000


def _soak_config(programs: int) -> Any:
    from vbsim.campaign.jobs import SoakConfig
    from vbsim.policy import preset

    return SoakConfig(preset("hardened"), programs, batch=50, lanes=2)


def _throughput(engine: Any, programs: int, seed: int = 1) -> float:
    """Programs per second of a soak campaign on ``engine`` (already warm)."""
    from vbsim.campaign.soak import run as run_campaign

    campaign = run_campaign(_soak_config(programs), seed, engine)
    return len(campaign.records) / campaign.seconds


def soak_programs_per_s() -> float:
    """A hardened soak with the default (guided) generator on 2 local workers: 1,000 programs
    after a 100-program warm-up on the same pool (imports, image caches, first boots)."""
    from vbsim.campaign.engine import LocalEngine

    with LocalEngine(2) as engine:
        _throughput(engine, 100, seed=99)
        return _throughput(engine, 1000)


def _no_dask() -> str | None:
    from vbsim.campaign.engine import dask_available

    return None if dask_available() else "dask is not installed (pip install 'vbsim[cluster]')"


def dask_efficiency(pairs: int = 3, programs: int = 1000) -> float:
    """Throughput on a 2-worker Dask LocalCluster ÷ (2 × one local worker), both warm, the
    same 1,000 hardened programs (as soak_programs_per_s).  The two are measured in
    alternation, ``pairs`` times, and the medians compared: this machine's speed drifts by
    ±15 % over a minute, and measuring one engine after the other folded that drift into the
    ratio.  What two workers lose is mostly the tail: the guided generator's two lanes do
    unequal work, and the lane that finishes first waits for the other (about one job)."""
    from vbsim.campaign.engine import DaskEngine, LocalEngine

    with LocalEngine(1) as one, DaskEngine(2) as dask:
        _throughput(one, 50, seed=99)
        _throughput(dask, 100, seed=99)
        single, double = [], []
        for _ in range(pairs):
            single.append(_throughput(one, programs))
            double.append(_throughput(dask, programs))
    return statistics.median(double) / (2 * statistics.median(single))


def campaign_start_s(engine: str) -> float:
    """Seconds from nothing to the first soak job's records: the engine up (pool or cluster),
    the workers importing vbsim and booting their first machine."""
    from vbsim.campaign.engine import make_engine
    from vbsim.campaign.soak import run as run_campaign

    start = time.perf_counter()
    with make_engine(engine, 2) as runner:
        run_campaign(_soak_config(2).__class__(_soak_config(2).policy, 2, batch=1), 1, runner)
        return time.perf_counter() - start


METRICS: dict[str, Metric] = {
    "vtl_roundtrip_us": Metric(vtl_roundtrip_us, 5.0, False, "µs"),
    "read8_tlb_hit_per_s": Metric(read8_tlb_hit_per_s, 2_000_000, True, "/s"),
    "read8_tlb_miss_per_s": Metric(read8_tlb_miss_per_s, 200_000, True, "/s"),
    "ram_rss_mib": Metric(ram_rss_mib, 80, False, "MiB"),
    "boot_ms": Metric(boot_ms, 150, False, "ms"),
    "securecall_null_us": Metric(securecall_null_us, 15, False, "µs"),
    "syscall_null_us": Metric(syscall_null_us, 3, False, "µs"),
    "trustlet_admit_ms": Metric(trustlet_admit_ms, 20, False, "ms"),
    "ium_secure_syscall_us": Metric(ium_secure_syscall_us, 10, False, "µs"),
    "catalogue_s": Metric(catalogue_s, 5, False, "s"),
    "matrix_ms": Metric(matrix_ms, 200, False, "ms"),
    "report_s": Metric(lambda: _report_s(), 10, False, "s"),
    "soak_programs_per_s": Metric(soak_programs_per_s, 120, True, "/s", repeat=1),
    "dask_efficiency": Metric(dask_efficiency, 0.85, True, "", repeat=1, skip=_no_dask),
    # no target in the issue (it asks for the figure): the bound here is this model's own
    "campaign_start_local_s": Metric(lambda: campaign_start_s("local"), 10, False, "s", repeat=1),
    "campaign_start_dask_s": Metric(
        lambda: campaign_start_s("dask"), 20, False, "s", repeat=1, skip=_no_dask
    ),
}


def _report_s() -> float:
    from vbsim.report import report_s

    return report_s()


def register(name: str, metric: Metric) -> None:
    """Later subsystems add their metrics here."""
    METRICS[name] = metric


def run(repeat: int = 7, only: list[str] | None = None) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name, metric in METRICS.items():
        if only and name not in only:
            continue
        why = metric.skip() if metric.skip is not None else None
        if why is not None:
            results[name] = {"skipped": why, "target_text": metric.target_text}
            continue
        count = min(repeat, metric.repeat) if metric.repeat is not None else repeat
        samples = [metric.measure() for _ in range(count)]
        median = statistics.median(samples)
        results[name] = {
            "median": median,
            "samples": samples,
            "target": metric.target,
            "target_text": metric.target_text,
            "meets": metric.meets(median),
            "unit": metric.unit,
        }
    return results


def main(argv: list[str]) -> None:
    if "--rss-probe" in argv:
        print(f"{_rss_probe():.2f}")
        return
    repeat = 7
    if "--repeat" in argv:
        repeat = int(argv[argv.index("--repeat") + 1])
    only = argv[argv.index("--only") + 1].split(",") if "--only" in argv else None
    results = run(repeat=repeat, only=only)
    if "--json" in argv:
        print(json.dumps(results))
    else:
        for name, row in results.items():
            if "skipped" in row:
                skipped = f"{'skipped':>14s}  target {row['target_text']:>18s}"
                print(f"{name:28s} {skipped}  {row['skipped']}")
                continue
            print(
                f"{name:28s} {row['median']:>14.6g}  target {row['target_text']:>18s}  "
                f"{'ok' if row['meets'] else 'MISSED'}"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
