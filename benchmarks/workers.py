"""`relaion run --workers N` beside `--workers 1` (issue 21): wall time and the memory of the whole run.

Generates demo shards once, then runs `relaion run` from a fresh work folder for each number of workers in turn,
alternating and repeating (a shared machine is noisy), sampling every 0.2 s the resident memory of the run's
process tree (the command, the fork server and the workers, summed) and of its largest process. For one
worker it also reports the cores the run kept busy (CPU time / wall time of the command, which then has no
worker processes).

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


def rss_mib(pid: int) -> float:
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
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
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            sizes = [rss_mib(pid) for pid in tree(process.pid)]
            peak["total"] = max(peak["total"], sum(sizes))
            peak["largest"] = max(peak["largest"], max(sizes, default=0.0))
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
    return {"workers": workers, "seconds": seconds, "cores busy": (usage.ru_utime + usage.ru_stime) / seconds,
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
    print("| run | workers | seconds | cores busy (1 worker) | peak RSS of the run, MiB | largest process, MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for repeat in range(1, args.repeat + 1):
        for workers in args.workers:
            result = run(inputs, args.dir / "out", workers)
            busy = f"{result['cores busy']:.2f}" if workers == 1 else ""
            print(f"| {repeat} | {workers} | {result['seconds']:.1f} | {busy} | {result['peak MiB (all)']:,.0f}"
                  f" | {result['peak MiB (largest)']:,.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
