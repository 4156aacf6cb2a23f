"""One MoE layer's experts on CPU: vLLM's fused-MoE kernel (what the plugin runs for text tokens) against our
experts' own path (what it ran before, and still runs for image tokens), same weights and routing.

    .venv-vllm/bin/python -m bench.vllm_moe                      # medium config, fp32, 1 / 8 / 32 / 2048 tokens
    .venv-vllm/bin/python -m bench.vllm_moe --dtype bfloat16 --tokens 1,32 --json out.json

Timed in alternating rounds with one compute thread; reported as the median wall and thread-CPU milliseconds
per call (on a shared machine the CPU time is the steadier figure).
"""

from __future__ import annotations

import argparse

import torch

from bench.common import finish, interleaved_times
from bench.vllm_lm import PRESETS


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="medium", choices=PRESETS)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--tokens", default="1,8,32,2048")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()

    from zaya_vl.lm.config import ZayaLMConfig
    from zaya_vl.lm.moe import Routing, ZayaExperts
    from zaya_vl.lm.presets import lm_size
    from zaya_vl.vllm.lm import FusedExperts

    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    config = ZayaLMConfig(**lm_size(args.preset))
    generator = torch.Generator().manual_seed(0)
    experts = ZayaExperts(config).to(dtype)
    with torch.no_grad():
        for param in experts.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    fused = FusedExperts(experts)
    rows = []
    for tokens in (int(t) for t in args.tokens.split(",")):
        x = torch.randn(tokens, config.hidden_size, generator=generator).to(dtype)
        expert = torch.randint(0, config.num_experts + 1, (tokens,), generator=generator)  # skip included
        routing = Routing(expert=expert, weight=torch.rand(tokens, generator=generator), router_state=None,
                          logits=None)
        with torch.no_grad():
            difference = (fused(x, routing, experts).float() - experts(x, routing).float()).abs().max().item()
            times = interleaved_times({"ours": lambda: experts(x, routing),
                                       "fused": lambda: fused(x, routing, experts)}, args.repeats)
        row = {"tokens": tokens, "max_abs_difference": difference,
               **{f"{name}_{kind}_ms": 1e3 * times[name][f"{kind}_s"] for name in times for kind in ("wall", "cpu")}}
        rows.append(row)
        print(f"{tokens:6d} tokens: ours {row['ours_cpu_ms']:8.3f} ms cpu ({row['ours_wall_ms']:8.3f} wall)  "
              f"fused {row['fused_cpu_ms']:8.3f} ms cpu ({row['fused_wall_ms']:8.3f} wall)  "
              f"ours/fused {row['ours_cpu_ms'] / row['fused_cpu_ms']:5.2f}  max |diff| {difference:.1e}")
    return finish({"config": vars(args), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
