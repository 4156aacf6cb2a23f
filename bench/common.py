"""What every benchmark shares: interleaved timing, peak memory, the results table and JSON."""

from __future__ import annotations

import json
import statistics
import time

import torch


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
    print(f"{'batch':>5} {'metric':>18} {peer:>14} {ours:>14} {'ratio':>7}")
    for row in rows:
        unit = "MiB" if row["metric"].endswith("bytes") else ""
        scale = 2 ** 20 if unit else 1
        print(f"{row['batch']:>5} {row['metric']:>18} {row[peer] / scale:>14.1f} {row[ours] / scale:>14.1f} "
              f"{row['ratio']:>6.2f}x")


def finish(results: dict, json_path: str | None) -> dict:
    print(json.dumps(results))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results


__all__ = ["finish", "interleaved_medians", "peak_memory_bytes", "print_rows", "synchronize"]
