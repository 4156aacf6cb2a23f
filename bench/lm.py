"""ZAYA1 LM speed and memory: zaya_vl.lm against upstream transformers `zaya`, same config and weights, one run.

    python -m bench.lm                                   # medium config, CPU, fp32, 1 thread, batch 1 and 8
    python -m bench.lm --batch-sizes 1,8,64 --json out.json
    python -m bench.lm --preset zaya1-8b --device cuda --dtype bfloat16 --batch-sizes 1,16,64 --prompt-len 4096

Variants: ``upstream`` (transformers ``zaya``, its default cache), ``zaya_vl`` (ours, eager, dynamic cache) and
``zaya_vl_compiled`` (ours, ``cache_implementation="static"``: the decode step compiled; on CUDA a CUDA graph).
Prints, per batch size, prefill and decode tokens/s and peak memory of each and the ratios to upstream (for
memory, lower is better), then everything as JSON. On CPU every time is reported twice: wall, and the CPU time
of the calling thread with ``--threads 1`` (default there), which a busy shared machine barely disturbs; the
``*_cpu`` rows are the figures to compare there. Timings are medians over repeats after a warm-up (which
includes compiling), variants alternating round by round. Prefill is what `generate()` runs first (fill the cache, last-position
logits); decode goes through `generate()` with its prefill subtracted. Weights are random, with the routers'
balancing biases calibrated so tokens spread over experts as in a trained model. The KV cache's bytes per token
are measured from what our cache allocates.
"""

from __future__ import annotations

import argparse

import torch
import transformers

from bench.common import EXACT_LENGTH, finish, interleaved_times, peak_memory_bytes, print_rows
from zaya_vl.lm import ZayaCache, ZayaLM
from zaya_vl.lm.presets import lm_size, zaya1_8b_config
from zaya_vl.testing import balance_routing_, randomize_

PRESETS = {name: lm_size(name) for name in ("tiny", "medium", "zaya1-8b")}  # sizes from the one registry


def build_models(preset: str, dtype: torch.dtype, device: torch.device, with_upstream: bool):
    config_kwargs = PRESETS[preset]
    with device:
        ours = ZayaLM(zaya1_8b_config(**config_kwargs))
    randomize_(ours, seed=0, std=0.02 if preset == "zaya1-8b" else 0.05)
    calibration = torch.randint(3, ours.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(1))
    balance_routing_(ours.eval(), calibration.to(device))  # spread tokens over experts as a trained router does
    ours = ours.to(dtype)
    ours.model.layers.apply(lambda m: m.float() if type(m).__name__ == "ZayaRouter" else None)  # router: fp32
    models = {"zaya_vl": ours.eval()}
    if with_upstream:
        with device:
            upstream = transformers.ZayaForCausalLM(transformers.ZayaConfig(**config_kwargs))
        upstream.load_state_dict(ours.state_dict())
        models = {"upstream": upstream.to(dtype).eval(), **models}
    return models


GENERATE_KWARGS = {"upstream": {}, "zaya_vl": {"cache_implementation": "dynamic"},
                   "zaya_vl_compiled": {"cache_implementation": "static"}}


@torch.no_grad()
def measure(models: dict, batch: int, prompt_len: int, new_tokens: int, repeats: int, device) -> dict:
    """Per variant: prefill and decode throughput (wall and thread CPU time) and peak memory of a generation."""
    vocab = next(iter(models.values())).config.vocab_size
    input_ids = torch.randint(3, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)
    variants = {name: models["zaya_vl" if name.startswith("zaya_vl") else name] for name in GENERATE_KWARGS
                if (name.startswith("zaya_vl") and "zaya_vl" in models) or name in models}

    def prefill(model):
        return lambda: model(input_ids, use_cache=True, logits_to_keep=1)

    def generate(name, n):
        model, kwargs = variants[name], GENERATE_KWARGS[name]
        return lambda: model.generate(input_ids, max_new_tokens=n, do_sample=False, **EXACT_LENGTH, **kwargs)

    prefill_t = interleaved_times({name: prefill(m) for name, m in models.items()}, repeats, device)
    prefill_t["zaya_vl_compiled"] = prefill_t.get("zaya_vl")  # the prefill runs eagerly in both
    one = interleaved_times({name: generate(name, 1) for name in variants}, repeats, device)
    many = interleaved_times({name: generate(name, new_tokens + 1) for name in variants}, repeats, device)
    results = {}
    for name in variants:
        row = {"peak_generate_bytes": peak_memory_bytes(generate(name, new_tokens + 1), device)}
        for clock in ("wall", "cpu"):
            if clock == "cpu" and device.type != "cpu":
                continue
            suffix = "" if clock == "wall" else "_cpu"
            seconds = prefill_t[name][f"{clock}_s"]
            row[f"prefill_ms{suffix}"] = seconds * 1e3
            row[f"prefill_tok_s{suffix}"] = batch * prompt_len / seconds
            decode_s = max(many[name][f"{clock}_s"] - one[name][f"{clock}_s"], 1e-9)
            row[f"decode_tok_s{suffix}"] = batch * new_tokens / decode_s
            row[f"decode_ms_per_step{suffix}"] = decode_s / new_tokens * 1e3
        results[name] = row
    return results


def measured_kv_bytes_per_token(config, dtype, device) -> int:
    tokens = 16
    cache = ZayaCache(config, batch_size=1, max_length=tokens, dtype=dtype, device=device)
    return cache.kv_bytes() // tokens


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="medium")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: 1 on CPU, so per-thread CPU time is the whole cost)")
    parser.add_argument("--no-upstream", action="store_true", help="measure ours only (e.g. the 8B on one GPU)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()

    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    threads = args.threads or (1 if device.type == "cpu" else torch.get_num_threads())
    torch.set_num_threads(threads)
    models = build_models(args.preset, dtype, device, with_upstream=not args.no_upstream)
    config = models["zaya_vl"].config
    results = {"benchmark": "lm", "preset": args.preset, "dtype": args.dtype, "device": str(device),
               "threads": torch.get_num_threads(), "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
               "kv_cache_bytes_per_token": measured_kv_bytes_per_token(config, dtype, device),
               "kv_cache_bytes_per_token_config": config.kv_cache_bytes_per_token(dtype), "runs": []}
    peer = "upstream" if "upstream" in models else "zaya_vl"
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        measured = measure(models, batch, args.prompt_len, args.new_tokens, args.repeats, device)
        metrics = [m for m in next(iter(measured.values()))]
        for metric in metrics:
            row = {"batch": batch, "metric": metric, **{name: m.get(metric) for name, m in measured.items()}}
            for name in measured:
                if name != peer and row[peer] and row[name] is not None:
                    row[f"ratio_{name}"] = row[name] / row[peer]
            results["runs"].append(row)
    print_rows(results["runs"], peer)
    print(f"KV cache: {results['kv_cache_bytes_per_token']} bytes/token measured "
          f"({results['kv_cache_bytes_per_token_config']} from the config)")
    return finish(results, args.json)


if __name__ == "__main__":
    main()
