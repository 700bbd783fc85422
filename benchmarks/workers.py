"""`relaion run --workers N` beside `--workers 1` (issue 21): wall time and the memory of the whole run.

Generates demo shards once, then runs `relaion run` from a fresh work folder for each number of workers in turn,
alternating and repeating (a shared machine is noisy), sampling every 0.2 s the memory of the run's process
tree (the command, the fork server and the workers: their PSS summed) and of its largest process (RSS), and
the CPU time of every process of the tree (as last sampled: each loses less than 0.2 s); CPU / wall time is
the cores the run kept busy.

    python benchmarks/workers.py --shards 4 --rows 200000 --workers 1 2 --repeat 2 --dir /tmp/bench-workers
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from relaion_pipeline.demo_data import demo


def tree(root: int) -> list[int]:
    """`root` and every process below it."""
    parents: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(line for line in status.read_text().splitlines() if line.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        parents.setdefault(int(ppid.split()[1]), []).append(int(status.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system time of `pid` so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int, field: str) -> float:
    """`Rss` or `Pss` of `pid` (its proportional share of pages shared with others: the workers share the fork
    server's pages until they write them, so their resident sizes counted the shared ones twice)."""
    try:
        line = next(x for x in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if x.startswith(field))
    except (OSError, StopIteration):
        return 0.0
    return int(line.split()[1]) / 1024


def run(inputs: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "relaion_pipeline.cli", "run", "--shards", inputs / "shards",
               "--blocklists", inputs / "blocklists", "--sidecars", inputs / "sidecars", "--work", out / "work",
               "--release", out / "releases", "--workers", str(workers)]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(list(map(str, command)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"total": 0.0, "largest": 0.0}
    cpu: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pids = tree(process.pid)
            for pid in pids:
                cpu[pid] = max(cpu.get(pid, 0.0), cpu_seconds(pid))
            peak["total"] = max(peak["total"], sum(memory_mib(pid, "Pss:") for pid in pids))
            peak["largest"] = max(peak["largest"], max((memory_mib(pid, "Rss:") for pid in pids), default=0.0))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if status != 0:
        raise SystemExit(f"relaion run --workers {workers} failed:\n{output}")
    cpu[process.pid] = usage.ru_utime + usage.ru_stime  # the command's own, exactly
    return {"workers": workers, "seconds": seconds, "cpu": sum(cpu.values()),
            "peak MiB (all)": peak["total"], "peak MiB (largest)": peak["largest"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-workers"))
    args = parser.parse_args()
    inputs = args.dir / "in"
    if not (inputs / "shards").exists():
        demo.generate(inputs, shards=args.shards, rows=args.rows, seed=21)
    print(
        "| run | workers | seconds | CPU seconds | cores busy | peak of the run (PSS), MiB | largest process (RSS), MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for repeat in range(1, args.repeat + 1):
        for workers in args.workers:
            result = run(inputs, args.dir / "out", workers)
            busy = result["cpu"] / result["seconds"]
            print(f"| {repeat} | {workers} | {result['seconds']:.1f} | {result['cpu']:.1f} | {busy:.2f}"
                  f" | {result['peak MiB (all)']:,.0f}"
                  f" | {result['peak MiB (largest)']:,.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
