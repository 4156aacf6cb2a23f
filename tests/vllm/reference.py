"""Reference side of the two-venv vLLM tests: run in the project's venv (transformers >= 5.24), never in vLLM's.

    python tests/vllm/reference.py lm SPEC.json OUT_DIR

    python tests/vllm/reference.py vl SPEC.json OUT_DIR

lm: SPEC {"config": {...ZayaLMConfig overrides...}, "seed": int, "prompts": [[ids...], ...], "max_new": int}.
vl: SPEC {"config": {...text overrides...}, "image_attention": str, "seed": int, "layout": "native" | "transformers" | "zyphra",
          "prompts": [{"text": str, "images": [png path, ...]}, ...], "max_new": int}.
Writes a tiny random checkpoint of our ``ZayaLM`` / ``ZayaVL`` (with its processor) to OUT_DIR/checkpoint and
OUT_DIR/reference.json with, per prompt, the greedy tokens and each step's log-probability of the chosen token,
decoded one token at a time through our model's own cache (fp32, CPU); for vl also the prompt's input_ids as
``ZayaVLProcessor`` builds them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


@torch.no_grad()
def greedy(model, prompt: list[int], max_new: int, **extra) -> tuple[list[int], list[float]]:
    ids = torch.tensor([prompt])
    out = model(input_ids=ids, use_cache=True, **extra)  # extra: the images, for the prompt only
    tokens, logprobs = [], []
    for _ in range(max_new):
        logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        token = int(logp.argmax())
        tokens.append(token)
        logprobs.append(float(logp[token]))
        out = model(input_ids=torch.tensor([[token]]), cache=out.cache, use_cache=True)
    return tokens, logprobs


def lm(spec: dict, out_dir: Path) -> None:
    from zaya_vl.lm import ZayaLM
    from zaya_vl.testing import balance_routing_, randomize_, tiny_lm_config

    torch.manual_seed(spec["seed"])
    model = ZayaLM(tiny_lm_config(**spec["config"])).eval()
    randomize_(model, seed=spec["seed"], std=spec.get("std", 0.3), skip_bias=spec.get("skip_bias", -0.5))
    calibration = torch.randint(3, model.config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(1))
    balance_routing_(model, calibration)
    model.save_pretrained(out_dir / "checkpoint")
    model = ZayaLM.from_pretrained(out_dir / "checkpoint", dtype=torch.float32).eval()
    results = [dict(zip(("tokens", "logprobs"), greedy(model, p, spec["max_new"]))) for p in spec["prompts"]]
    (out_dir / "reference.json").write_text(json.dumps(results))


def vl(spec: dict, out_dir: Path) -> None:
    from PIL import Image

    from zaya_vl import ZayaVL, ZayaVLProcessor
    from zaya_vl.testing import save_zyphra_checkpoint, tiny_vl_checkpoint

    layout = spec.get("layout", "native")
    native_dir = out_dir / ("checkpoint" if layout == "native" else "native_checkpoint")
    model, processor = tiny_vl_checkpoint(native_dir, seed=spec["seed"], std=spec.get("std", 0.1), **spec["config"])
    model.config.image_attention = spec["image_attention"]
    model.config.save_pretrained(native_dir)
    if layout == "zyphra":  # the same weights as Zyphra's original release lays them out
        save_zyphra_checkpoint(model, out_dir / "checkpoint", processor)
    elif layout != "native":  # the same weights written in another release's layout
        model.save_pretrained(out_dir / "checkpoint", layout=layout)
        processor.save_pretrained(out_dir / "checkpoint")
    model = ZayaVL.from_pretrained(out_dir / "checkpoint", dtype=torch.float32,
                                   image_attention=spec["image_attention"]).eval()
    processor = ZayaVLProcessor.from_pretrained(out_dir / "checkpoint")
    results = []
    for prompt in spec["prompts"]:
        images = [Image.open(path).convert("RGB") for path in prompt["images"]] or None
        inputs = processor(text=prompt["text"], images=images, return_tensors="pt")
        extra = {k: inputs[k] for k in ("pixel_values", "image_grid_thw") if k in inputs}
        ids = inputs["input_ids"][0].tolist()
        tokens, logprobs = greedy(model, ids, spec["max_new"], **extra)
        results.append({"tokens": tokens, "logprobs": logprobs, "prompt_ids": ids})
    (out_dir / "reference.json").write_text(json.dumps(results))


if __name__ == "__main__":
    kind, spec_file, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    {"lm": lm, "vl": vl}[kind](json.loads(Path(spec_file).read_text()), out)
