"""ZAYA1 LM speed: zaya_vl.lm against upstream transformers `zaya`, same config and weights, one run.

    python -m bench.lm                      # medium config on CPU, fp32, batch 1 and 8
    python -m bench.lm --preset tiny --json out.json

Prints prefill and decode tokens/s for both and their ratio (ours / upstream), then the same as JSON.
Timings are medians over repeats after a warm-up, ours and upstream alternating round by round; decode goes
through `generate()` (the path users take), with its prefill subtracted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import transformers

from zaya_vl.lm import ZayaLM
from zaya_vl.testing import balance_routing_, randomize_

PRESETS = {
    "tiny": dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, moe_intermediate_size=64, num_experts=4, router_hidden_size=16),
    "medium": dict(vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=128, moe_intermediate_size=512, num_experts=8, router_hidden_size=128),
}


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable, timed in alternating rounds so machine drift hits all alike."""
    samples = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for round_index in range(repeats):
        order = list(fns) if round_index % 2 == 0 else list(reversed(fns))
        for name in order:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


@torch.no_grad()
def measure(models: dict, batch: int, prompt_len: int, new_tokens: int, repeats: int, vocab: int) -> dict:
    input_ids = torch.randint(3, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(0))

    def prefill(model):
        # Prefill as generate() runs it: fill the cache, logits for the last position only.
        return lambda: model(input_ids, use_cache=True, logits_to_keep=1)

    def generate(model, n):
        return lambda: model.generate(input_ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    prefill_s = interleaved_medians({name: prefill(m) for name, m in models.items()}, repeats)
    one = interleaved_medians({name: generate(m, 1) for name, m in models.items()}, repeats)
    many = interleaved_medians({name: generate(m, new_tokens + 1) for name, m in models.items()}, repeats)
    return {name: {"prefill_tok_s": batch * prompt_len / prefill_s[name],
                   "decode_tok_s": batch * new_tokens / max(many[name] - one[name], 1e-9)}
            for name in models}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="medium")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()

    dtype = getattr(torch, args.dtype)
    config_kwargs = PRESETS[args.preset]
    ours = randomize_(ZayaLM(ZayaLM.config_class(**config_kwargs)), seed=0, std=0.05)
    calibration = torch.randint(3, config_kwargs["vocab_size"], (4, 64), generator=torch.Generator().manual_seed(1))
    balance_routing_(ours.eval(), calibration)  # spread tokens over experts as a trained router does
    upstream = transformers.ZayaForCausalLM(transformers.ZayaConfig(**config_kwargs))
    upstream.load_state_dict(ours.state_dict())
    upstream, ours = upstream.to(dtype).eval(), ours.to(dtype).eval()

    results = {"preset": args.preset, "config": config_kwargs, "dtype": args.dtype, "device": "cpu",
               "threads": torch.get_num_threads(), "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
               "runs": []}
    print(f"{'batch':>5} {'metric':>14} {'upstream':>12} {'zaya_vl':>12} {'ratio':>7}")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        measured = measure({"upstream": upstream, "zaya_vl": ours}, batch, args.prompt_len, args.new_tokens,
                           args.repeats, config_kwargs["vocab_size"])
        theirs, mine = measured["upstream"], measured["zaya_vl"]
        for metric in ("prefill_tok_s", "decode_tok_s"):
            ratio = mine[metric] / theirs[metric]
            print(f"{batch:>5} {metric:>14} {theirs[metric]:>12.1f} {mine[metric]:>12.1f} {ratio:>6.2f}x")
            results["runs"].append({"batch": batch, "metric": metric, "upstream": theirs[metric],
                                    "zaya_vl": mine[metric], "ratio": ratio})
    print(json.dumps(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
