#!/usr/bin/env python3
"""Speculation benchmark (`just bench-speculate`): job time with one slow
worker, without and with `--speculate`, in the same run.

A coordinator and two one-slot workers on loopback (worker-local shuffle).
One worker is slowed from here: SIGSTOP / SIGCONT cycles (running RUN_MS of
every CYCLE_MS), as a machine starved by a noisy neighbour would be; its
heartbeats still get out, so its leases never expire and without
speculation the job waits for its attempts. Rounds alternate the two
settings; every output is compared with `wmr seq` (sorted lines). Prints
each job's time, the medians and their ratio.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--wmr", required=True)
    p.add_argument("--guest", required=True, help="the word-count component")
    p.add_argument("--books", default="examples/data")
    p.add_argument("--dir", default="target/bench-speculate")
    p.add_argument("--files", type=int, default=12, help="input files (one map task each)")
    p.add_argument("--copies", type=int, default=3, help="the books concatenated this often per file")
    p.add_argument("--reducers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--run-ms", type=int, default=50)
    p.add_argument("--cycle-ms", type=int, default=1000)
    args = p.parse_args()

    work = Path(args.dir)
    shutil.rmtree(work, ignore_errors=True)
    inputs = work / "input"
    inputs.mkdir(parents=True)
    books = b"".join(f.read_bytes() for f in sorted(Path(args.books).glob("*.txt")))
    for i in range(args.files):
        (inputs / f"part-{i:02}.txt").write_bytes(books * args.copies)
    size_mb = args.files * len(books) * args.copies / 1e6

    reference = sorted(
        subprocess.run(
            [args.wmr, "seq", "--map", args.guest, "--input", str(inputs)],
            check=True, capture_output=True,
        ).stdout.decode().splitlines()
    )

    procs: list[subprocess.Popen] = []
    stop = threading.Event()
    try:
        state = work / "state"
        coordinator = spawn(procs, work, "coordinator", [
            args.wmr, "coordinator", "--listen", "127.0.0.1:0", "--state", str(state),
            "--lease", "30s",
        ])
        addr_file, fp_file = state / "coordinator.addr", state / "fingerprint"
        addr, fingerprint = wait_for(
            "the coordinator to listen",
            lambda: (addr_file.read_text().strip(), fp_file.read_text().strip())
            if addr_file.exists() and fp_file.exists() and len(fp_file.read_text().strip()) == 64
            else None,
            coordinator,
        )
        remote = ["--coordinator", addr, "--fingerprint", fingerprint]
        workers = [
            spawn(procs, work, name, [
                args.wmr, "worker", "--connect", addr, "--fingerprint", fingerprint,
                "--name", name, "--slots", "1", "--work-dir", str(work / name),
            ])
            for name in ["fast", "slow"]
        ]

        def deploy(name: str, extra: list[str]) -> float:
            out = work / name
            started = time.monotonic()
            subprocess.run(
                [args.wmr, "deploy", args.guest, "--input", str(inputs), "--output", str(out),
                 "--reducers", str(args.reducers), "--split-size", "1GiB", *remote, *extra],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600,
            )
            took = time.monotonic() - started
            lines = sorted(
                line for part in sorted(out.glob("part-r-*")) for line in part.read_text().splitlines()
            )
            if lines != reference:
                sys.exit(f"{name}: output differs from wmr seq")
            shutil.rmtree(out)
            return took

        # Compile caches and connections warm, before any worker is slowed.
        deploy("warm-up", [])
        slowing = threading.Thread(
            target=slow_down, args=(workers[1], args.run_ms, args.cycle_ms, stop), daemon=True
        )
        slowing.start()
        times: dict[str, list[float]] = {"without": [], "with": []}
        for r in range(args.rounds):
            for setting, extra in [("without", []), ("with", ["--speculate"])]:
                took = deploy(f"{setting}-{r}", extra)
                times[setting].append(took)
                print(f"round {r + 1}: {setting:7} --speculate {took:6.2f} s", flush=True)
        stop.set()
        slowing.join()
        without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
        print(
            f"{size_mb:.0f} MB word count, {args.files} map tasks, {args.reducers} reducers, "
            f"2 one-slot workers, one running {args.run_ms} ms of every {args.cycle_ms} ms:\n"
            f"median job time without --speculate {without:.2f} s, with {with_:.2f} s; "
            f"ratio with/without {with_ / without:.2f}"
        )
        return 0
    finally:
        stop.set()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            except ProcessLookupError:
                pass
            proc.wait()


def spawn(procs: list, work: Path, name: str, cmd: list[str]) -> subprocess.Popen:
    log = open(work / f"{name}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    procs.append(proc)
    return proc


def wait_for(what: str, probe, proc: subprocess.Popen, limit_s: float = 30):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"exited before {what}")
        got = probe()
        if got:
            return got
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def slow_down(proc: subprocess.Popen, run_ms: int, cycle_ms: int, stop: threading.Event) -> None:
    """Let `proc` run `run_ms` of every `cycle_ms` until `stop`."""
    while not stop.is_set():
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(run_ms / 1000)
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep((cycle_ms - run_ms) / 1000)
    os.kill(proc.pid, signal.SIGCONT)


if __name__ == "__main__":
    sys.exit(main())
