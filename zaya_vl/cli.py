"""The `zaya-vl` command line.

    zaya-vl describe [--preset zaya1-8b]     sizes of a config: parameters, active parameters, KV bytes/token
    zaya-vl demo-lm                          generate with the bundled tiny LM, print tokens/s
    zaya-vl train CONFIG [--resume]          text phases and VL stages with accelerate
    zaya-vl eval --model PATH --tasks ...    DocVQA / AI2D / MathVista, resumable
    zaya-vl score --task T --data D --predictions P.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def _describe(args: argparse.Namespace) -> int:
    from zaya_vl.lm.presets import PRESETS, describe

    sizes = describe(PRESETS[args.preset](), dtype=getattr(torch, args.dtype))
    print(json.dumps({"preset": args.preset, "dtype": args.dtype, **sizes}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from zaya_vl import demo_lm
    from zaya_vl.eval_vl.cli import add_eval_args, add_score_args
    from zaya_vl.lm.presets import PRESETS
    from zaya_vl.training.cli import add_train_args

    parser = argparse.ArgumentParser(prog="zaya-vl", description="ZAYA1-VL: run, fine-tune and evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)

    describe = sub.add_parser("describe", help="parameter counts and KV-cache bytes of a preset")
    describe.add_argument("--preset", choices=sorted(PRESETS), default="zaya1-8b")
    describe.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    describe.set_defaults(func=_describe)

    demo = sub.add_parser("demo-lm", help="generate with the bundled tiny ZAYA1 LM and print tokens/s")
    demo_lm.add_arguments(demo)
    demo.set_defaults(func=demo_lm.command)

    add_train_args(sub)
    add_eval_args(sub)
    add_score_args(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
