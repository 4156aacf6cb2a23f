"""ZAYA1-VL speed and memory on image prompts: ZayaVL against its peers, same weights, one run.

    python -m bench.vl                                   # medium config, CPU, fp32, batch 1 and 8
    python -m bench.vl --batch-sizes 1,8,64 --json out.json

Each prompt is one 224×224 image (64 image tokens after the 2×2 merge) inside 32 text tokens. Peers:
- ``upstream``: transformers' ``zaya`` LM fed the same merged embeddings (the vision tower is transformers'
  Qwen2.5-VL tower in both), i.e. what one gets by bolting the tower onto upstream ``zaya``: no vision LoRA,
  causal image attention, its DynamicCache.
- ``zaya_vl``: ours (image-gated LoRA, bidirectional image attention, compressed dynamic cache), eager;
- ``zaya_vl_compiled``: ours with ``cache_implementation="static"`` (the decode step compiled; the prefill,
  vision tower included, eager as in ``zaya_vl``).
With ``--threads 1`` (the default on CPU) every time is also reported as the calling thread's CPU time
(``*_cpu`` rows), which a busy shared machine barely disturbs.
Prefill = vision tower + LM prefill with the cache (last-position logits); decode = ``generate()`` steps with
the prefill subtracted; peak memory over a whole generation.
"""

from __future__ import annotations

import argparse

import torch
import transformers

from bench.common import EXACT_LENGTH, finish, interleaved_times, peak_memory_bytes, print_rows
from bench.lm import PRESETS as LM_PRESETS
from zaya_vl import ZayaVL, ZayaVLConfig
from zaya_vl.lm.presets import vision_size
from zaya_vl.testing import balance_routing_, image_prompt, randomize_

VISION = {name: vision_size(name) for name in ("tiny", "medium")}  # towers from the one registry
IMAGE_TOKENS = dict(image_token_id=5, vision_start_token_id=6, vision_end_token_id=7)


def build(preset: str, dtype: torch.dtype, device: torch.device):
    text = {**LM_PRESETS[preset], "vision_lora_rank_attn": 16, "vision_lora_rank_mlp": 16}
    vision = {**VISION[preset], "out_hidden_size": text["hidden_size"]}
    with device:
        ours = ZayaVL(ZayaVLConfig(text_config=text, vision_config=vision, **IMAGE_TOKENS))
    randomize_(ours, seed=0, std=0.05)
    balance_routing_(ours.eval(), torch.randint(8, text["vocab_size"], (4, 64)).to(device))
    ours = ours.to(dtype).eval()
    with device:
        upstream = transformers.ZayaForCausalLM(transformers.ZayaConfig(**LM_PRESETS[preset]))
    upstream.model.load_state_dict({k: v for k, v in ours.language_model.state_dict().items()
                                    if ".vision_adapters." not in k})
    upstream.lm_head.load_state_dict(ours.lm_head.state_dict())
    return ours, upstream.to(dtype).eval()


def batch_inputs(batch: int, vocab: int, device: torch.device) -> dict:
    prompts = [image_prompt([(1, 16, 16)], text_before=8, text_after=24, seed=i, vocab=vocab, tokens=IMAGE_TOKENS)
               for i in range(batch)]
    return {"input_ids": torch.cat([p["input_ids"] for p in prompts]).to(device),
            "pixel_values": torch.cat([p["pixel_values"] for p in prompts]).to(device),
            "image_grid_thw": torch.cat([p["image_grid_thw"] for p in prompts]).to(device)}


class UpstreamWithTower:
    """Upstream zaya driven through our vision tower and embedding merge: the peer a user would build."""

    def __init__(self, ours: ZayaVL, upstream) -> None:
        self.ours, self.upstream = ours, upstream

    def embeds(self, inputs: dict) -> torch.Tensor:
        ids, grids = inputs["input_ids"], inputs["image_grid_thw"]
        embeds = self.upstream.get_input_embeddings()(ids)
        features = self.ours.get_image_features(inputs["pixel_values"], grids)
        mask = self.ours.model.get_placeholder_mask(ids, embeds, features, grids)
        return embeds.masked_scatter(mask[..., None], features.to(embeds.dtype))

    def prefill(self, inputs):
        return self.upstream(inputs_embeds=self.embeds(inputs), use_cache=True, logits_to_keep=1)

    def generate(self, inputs, n):
        return self.upstream.generate(inputs_embeds=self.embeds(inputs), max_new_tokens=n,
                                      do_sample=False, **EXACT_LENGTH)


@torch.no_grad()
def measure(ours, peer, batch, new_tokens, repeats, device) -> dict:
    inputs = batch_inputs(batch, ours.config.text_config.vocab_size, device)
    tokens = batch * inputs["input_ids"].shape[1]
    prefill = {"upstream": lambda: peer.prefill(inputs),
               "zaya_vl": lambda: ours(**inputs, use_cache=True, logits_to_keep=1)}
    variants = ("upstream", "zaya_vl", "zaya_vl_compiled")

    def generate(name, n):
        if name == "upstream":
            return lambda: peer.generate(inputs, n)
        cache = "static" if name == "zaya_vl_compiled" else "dynamic"
        return lambda: ours.generate(**inputs, max_new_tokens=n, do_sample=False, **EXACT_LENGTH,
                                     cache_implementation=cache)

    prefill_t = interleaved_times(prefill, repeats, device)
    prefill_t["zaya_vl_compiled"] = prefill_t["zaya_vl"]  # the same eager prefill
    one = interleaved_times({n: generate(n, 1) for n in variants}, repeats, device)
    many = interleaved_times({n: generate(n, new_tokens + 1) for n in variants}, repeats, device)
    results = {}
    for name in variants:
        row = {"peak_generate_bytes": peak_memory_bytes(generate(name, new_tokens + 1), device)}
        for clock in ("wall", "cpu") if device.type == "cpu" else ("wall",):
            suffix = "" if clock == "wall" else "_cpu"
            seconds = prefill_t[name][f"{clock}_s"]
            row[f"prefill_ms{suffix}"] = seconds * 1e3
            row[f"prefill_tok_s{suffix}"] = tokens / seconds
            row[f"decode_tok_s{suffix}"] = batch * new_tokens / max(many[name][f"{clock}_s"] - one[name][f"{clock}_s"],
                                                                    1e-9)
        results[name] = row
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(VISION), default="medium")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()

    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    torch.set_num_threads(args.threads or (1 if device.type == "cpu" else torch.get_num_threads()))
    ours, upstream = build(args.preset, dtype, device)
    peer = UpstreamWithTower(ours, upstream)
    results = {"benchmark": "vl", "preset": args.preset, "dtype": args.dtype, "device": str(device),
               "threads": torch.get_num_threads(), "image_tokens": 64, "text_tokens": 34,
               "new_tokens": args.new_tokens, "runs": []}
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        measured = measure(ours, peer, batch, args.new_tokens, args.repeats, device)
        for metric in measured["zaya_vl"]:
            row = {"batch": batch, "metric": metric, **{name: m[metric] for name, m in measured.items()}}
            for name in ("zaya_vl", "zaya_vl_compiled"):
                row[f"ratio_{name}"] = row[name] / row["upstream"]
            results["runs"].append(row)
    print_rows(results["runs"], "upstream")
    return finish(results, args.json)


if __name__ == "__main__":
    main()
