"""What every benchmark shares: interleaved timing, peak memory, the results table and JSON."""

from __future__ import annotations

import json
import statistics
import time

import torch


# Generate exactly max_new_tokens by having no end-of-sequence token, as a user's generate() loop runs: forcing
# the length with min_new_tokens would add two logits processors to every step (~1.3 ms a step at batch 8 on the
# medium config, in both models' runs alike) that users do not run.
EXACT_LENGTH = {"eos_token_id": None}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict, repeats: int, device: torch.device = torch.device("cpu")) -> dict:
    """Median seconds of each callable, timed in alternating rounds so machine drift hits all alike."""
    samples = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for round_index in range(repeats):
        order = list(fns) if round_index % 2 == 0 else list(reversed(fns))
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def interleaved_times(fns: dict, repeats: int, device: torch.device = torch.device("cpu"), warmups: int = 1) -> dict:
    """Median wall seconds and median CPU seconds of the calling thread for each callable, timed in alternating
    rounds. On a shared CPU the thread's CPU time (with one compute thread) hardly moves when other processes
    take cores, where wall time does; on a GPU only wall time means anything."""
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(warmups):
            fn()
    for round_index in range(repeats):
        order = list(fns) if round_index % 2 == 0 else list(reversed(fns))
        for name in order:
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.thread_time()
            fns[name]()
            synchronize(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.thread_time() - start_cpu)
    return {name: {"wall_s": statistics.median(wall[name]), "cpu_s": statistics.median(cpu[name])} for name in fns}


def peak_memory_bytes(fn, device: torch.device) -> int:
    """Peak bytes allocated above the starting point while ``fn`` runs (CUDA stats; on CPU the profiler's
    allocation events, which see every tensor allocation and free)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    import os
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as folder:
        trace = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e["ts"]):
        current += event["args"]["Bytes"]  # negative for frees
        peak = max(peak, current)
    return peak


def print_rows(rows: list[dict], peer: str, ours: str = "zaya_vl") -> None:
    """One line per (batch, metric): every measured variant, then each variant's ratio to ``peer``."""
    variants = [k for k in rows[0] if k not in ("batch", "metric") and not k.startswith("ratio")] if rows else []
    ratios = [k for k in rows[0] if k.startswith("ratio")] if rows else []
    print(f"{'batch':>5} {'metric':>22} " + " ".join(f"{v:>18}" for v in variants) + " "
          + " ".join(f"{r:>24}" for r in ratios))
    for row in rows:
        unit = "MiB" if row["metric"].endswith("bytes") else ""
        scale = 2 ** 20 if unit else 1
        cells = " ".join(f"{row[v] / scale:>18.1f}" if row[v] is not None else f"{'-':>18}" for v in variants)
        rcells = " ".join(f"{row[r]:>23.2f}x" if row[r] is not None else f"{'-':>24}" for r in ratios)
        print(f"{row['batch']:>5} {row['metric']:>22} {cells} {rcells}")


def finish(results: dict, json_path: str | None) -> dict:
    print(json.dumps(results))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results


__all__ = ["finish", "interleaved_medians", "interleaved_times", "peak_memory_bytes", "print_rows", "synchronize"]
