"""`zaya-vl demo-lm`: build the bundled tiny ZAYA1 LM, generate from a prompt, report tokens/s.

The weights are random (seeded): this shows the machinery — CCA with its compressed cache, top-1 MoE with
the skip expert, generate() — not language. Its text is the model's byte-level ids decoded as bytes.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources

import torch

from zaya_vl.lm import ZayaLM, ZayaLMConfig
from zaya_vl.lm.presets import describe
from zaya_vl.testing import balance_routing_, randomize_


def bundled_config(name: str = "tiny_lm") -> ZayaLMConfig:
    text = resources.files("zaya_vl.configs").joinpath(f"{name}.json").read_text()
    return ZayaLMConfig(**json.loads(text))


def run(prompt: str, max_new_tokens: int, seed: int) -> dict:
    config = bundled_config()
    torch.manual_seed(seed)
    model = randomize_(ZayaLM(config), seed=seed, std=0.08).eval()
    prompt_ids = torch.tensor([[config.bos_token_id] + [256 + b % 256 for b in prompt.encode()]])
    balance_routing_(model, prompt_ids)
    with torch.no_grad():
        model.generate(prompt_ids, max_new_tokens=2, do_sample=False)  # warm-up
        start = time.perf_counter()
        output = model.generate(prompt_ids, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                do_sample=False)
        seconds = time.perf_counter() - start
    new_ids = output[0, prompt_ids.shape[1]:].tolist()
    return {
        "config": "zaya_vl/configs/tiny_lm.json",
        "parameters": describe(config)["total_parameters"],
        "prompt_tokens": prompt_ids.shape[1],
        "generated_ids": new_ids,
        "tokens_per_second": len(new_ids) / seconds,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="zaya-vl demo-lm", description=__doc__)
    add_arguments(parser)
    return command(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", default="The total on this receipt is")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)


def command(args: argparse.Namespace) -> int:
    result = run(args.prompt, args.max_new_tokens, args.seed)
    print(f"tiny ZAYA1 LM from {result['config']}: {result['parameters']:,} parameters (random weights)")
    print(f"prompt: {args.prompt!r} ({result['prompt_tokens']} tokens)")
    print(f"generated ids: {result['generated_ids']}")
    print(f"decode speed: {result['tokens_per_second']:.1f} tokens/s (batch 1, CPU, fp32)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
