"""ZAYA1 LM speed and memory: zaya_vl.lm against upstream transformers `zaya`, same config and weights, one run.

    python -m bench.lm                                   # medium config, CPU, fp32, batch 1 and 8
    python -m bench.lm --batch-sizes 1,8,64 --json out.json
    python -m bench.lm --preset zaya1-8b --device cuda --dtype bfloat16 --batch-sizes 1,16,64 --prompt-len 4096

Prints, per batch size, prefill and decode tokens/s and peak memory for both and the ratio (ours / upstream;
for memory, lower is better), then everything as JSON. Timings are medians over repeats after a warm-up, ours
and upstream alternating round by round. Prefill is what `generate()` runs first (fill the cache, last-position
logits); decode goes through `generate()` with its prefill subtracted. Weights are random, with the routers'
balancing biases calibrated so tokens spread over experts as in a trained model. The KV cache's bytes per token
are measured from what our cache allocates.
"""

from __future__ import annotations

import argparse

import torch
import transformers

from bench.common import finish, interleaved_medians, peak_memory_bytes, print_rows
from zaya_vl.lm import ZayaCache, ZayaLM
from zaya_vl.lm.presets import zaya1_8b_config
from zaya_vl.testing import balance_routing_, randomize_

PRESETS = {
    "tiny": dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, moe_intermediate_size=64, num_experts=4, router_hidden_size=16),
    "medium": dict(vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=128, moe_intermediate_size=512, num_experts=8, router_hidden_size=128),
    "zaya1-8b": {},  # the released config (upstream ZayaConfig defaults)
}


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


@torch.no_grad()
def measure(models: dict, batch: int, prompt_len: int, new_tokens: int, repeats: int, device) -> dict:
    vocab = next(iter(models.values())).config.vocab_size
    input_ids = torch.randint(3, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)

    def prefill(model):
        return lambda: model(input_ids, use_cache=True, logits_to_keep=1)

    def generate(model, n):
        return lambda: model.generate(input_ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    prefill_s = interleaved_medians({name: prefill(m) for name, m in models.items()}, repeats, device)
    one = interleaved_medians({name: generate(m, 1) for name, m in models.items()}, repeats, device)
    many = interleaved_medians({name: generate(m, new_tokens + 1) for name, m in models.items()}, repeats, device)
    return {name: {
        "prefill_tok_s": batch * prompt_len / prefill_s[name],
        "prefill_ms": prefill_s[name] * 1e3,
        "decode_tok_s": batch * new_tokens / max(many[name] - one[name], 1e-9),
        "peak_generate_bytes": peak_memory_bytes(generate(model, new_tokens + 1), device),
    } for name, model in models.items()}


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
    parser.add_argument("--no-upstream", action="store_true", help="measure ours only (e.g. the 8B on one GPU)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()

    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    models = build_models(args.preset, dtype, device, with_upstream=not args.no_upstream)
    config = models["zaya_vl"].config
    results = {"benchmark": "lm", "preset": args.preset, "dtype": args.dtype, "device": str(device),
               "threads": torch.get_num_threads(), "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
               "kv_cache_bytes_per_token": measured_kv_bytes_per_token(config, dtype, device),
               "kv_cache_bytes_per_token_config": config.kv_cache_bytes_per_token(dtype), "runs": []}
    peer = "upstream" if "upstream" in models else "zaya_vl"
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        measured = measure(models, batch, args.prompt_len, args.new_tokens, args.repeats, device)
        for metric in ("prefill_tok_s", "prefill_ms", "decode_tok_s", "peak_generate_bytes"):
            row = {"batch": batch, "metric": metric, **{name: m[metric] for name, m in measured.items()}}
            row["ratio"] = row["zaya_vl"] / row[peer]
            results["runs"].append(row)
    print_rows(results["runs"], peer)
    print(f"KV cache: {results['kv_cache_bytes_per_token']} bytes/token measured "
          f"({results['kv_cache_bytes_per_token_config']} from the config)")
    return finish(results, args.json)


if __name__ == "__main__":
    main()
