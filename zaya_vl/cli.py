"""The `zaya-vl` command line.

    zaya-vl describe [--preset zaya1-8b]     sizes of a config: parameters, active parameters, KV bytes/token
    zaya-vl ask --image IMG "QUESTION"       answer a question about an image
    zaya-vl demo [--model DIR] [--limit N]   the bundled tiny model answers example documents, then scores itself
    zaya-vl demo-lm                          generate with the bundled tiny LM, print tokens/s
    zaya-vl train CONFIG [--resume]          text phases and VL stages with accelerate
    zaya-vl merge BASE ADAPTER OUT           fold a PEFT LoRA adapter (e.g. runs/x/final/adapter) into BASE
    zaya-vl eval --model PATH --tasks ...    DocVQA / AI2D / MathVista, resumable
    zaya-vl score --task T --data D --predictions P.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def _describe(args: argparse.Namespace) -> int:
    from zaya_vl.lm.presets import PRESETS, describe

    sizes = describe(PRESETS[args.preset](), dtype=getattr(torch, args.dtype))
    print(json.dumps({"preset": args.preset, "dtype": args.dtype, **sizes}, indent=2))
    return 0


def _ask(args: argparse.Namespace) -> int:
    from zaya_vl.inference import GenerationSettings, VLAssistant
    from zaya_vl.prompts import docvqa_prompt

    model = args.model or str(bundled_model_path())
    question = docvqa_prompt(args.question) if args.task == "docvqa" else args.question
    assistant = VLAssistant.from_pretrained(
        model, **device_kwargs(args),
        settings=GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature))
    print(assistant.ask(args.image, question))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from zaya_vl.demo import run_demo

    try:
        run_demo(args.model, args.examples_dir, args.eval_dir, args.output_dir, limit=args.limit,
                 batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, **device_kwargs(args))
    except FileNotFoundError as error:
        raise SystemExit(f"zaya-vl demo: {error}") from None
    return 0


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """--device / --dtype, as every command that runs the model takes them."""
    parser.add_argument("--device", default=None,
                        help="cuda, cuda:1, cpu, or 'auto' (split over the GPUs); default: cuda when available")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32", "auto"],
                        help="default: bfloat16 on a GPU, float32 on CPU")


def device_kwargs(args: argparse.Namespace) -> dict:
    """VLAssistant.from_pretrained's placement arguments from add_device_args' flags."""
    device = getattr(args, "device", None)
    if device == "auto":
        return {"device_map": "auto", "dtype": getattr(args, "dtype", None)}
    return {"device": device, "dtype": getattr(args, "dtype", None)}


def _merge(args: argparse.Namespace) -> int:
    from zaya_vl.training.config import ConfigError
    from zaya_vl.training.models import merge_adapter

    try:
        out = merge_adapter(args.base, args.adapter, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except (ConfigError, OSError) as error:
        raise SystemExit(f"zaya-vl merge: {error}") from None
    print(f"merged {args.adapter} into {args.base}: {out}")
    return 0


def bundled_model_path() -> Path:
    """The tiny ZAYA1-VL trained on synthetic documents that ships with the source repository."""
    from zaya_vl.demo import DEFAULT_MODEL

    if not (DEFAULT_MODEL / "config.json").is_file():
        raise SystemExit(f"zaya-vl: the bundled tiny model is not at {DEFAULT_MODEL}: it ships with the source "
                         "repository (examples/tiny_docvqa/model), not with an installed wheel. Pass --model PATH "
                         "(a checkpoint folder or a hub id such as Zyphra/ZAYA1-VL-8B), or run from a checkout.")
    return DEFAULT_MODEL


def build_parser() -> argparse.ArgumentParser:
    from zaya_vl import demo_lm
    from zaya_vl.demo import DEFAULT_EVAL, DEFAULT_EXAMPLES, DEFAULT_MODEL, DEFAULT_OUTPUT
    from zaya_vl.eval_vl.cli import add_eval_args, add_score_args
    from zaya_vl.lm.presets import PRESETS
    from zaya_vl.training.cli import add_train_args

    parser = argparse.ArgumentParser(prog="zaya-vl", description="ZAYA1-VL: run, fine-tune and evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)

    describe = sub.add_parser("describe", help="parameter counts and KV-cache bytes of a preset")
    describe.add_argument("--preset", choices=sorted(PRESETS), default="zaya1-8b")
    describe.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    describe.set_defaults(func=_describe)

    demo_vl = sub.add_parser("demo", help="the bundled tiny model answers questions about example documents, "
                                          "then scores itself on a held-out split")
    demo_vl.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint folder (default: %(default)s)")
    demo_vl.add_argument("--examples-dir", type=Path, default=DEFAULT_EXAMPLES,
                         help="folder with receipt.png, form.png, chart.png, diagram.png (default: %(default)s)")
    demo_vl.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL,
                         help="folder with docvqa.jsonl and ai2d.jsonl (default: %(default)s)")
    demo_vl.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT,
                         help="eval results; rerun to resume (default: %(default)s)")
    demo_vl.add_argument("--limit", type=int, default=None, help="first N items of each eval task")
    demo_vl.add_argument("--batch-size", type=int, default=8)
    demo_vl.add_argument("--max-new-tokens", type=int, default=None, help="cap every reply (default: each task's)")
    add_device_args(demo_vl)
    demo_vl.set_defaults(func=_demo)

    demo = sub.add_parser("demo-lm", help="generate with the bundled tiny ZAYA1 LM and print tokens/s")
    demo_lm.add_arguments(demo)
    demo.set_defaults(func=demo_lm.command)

    ask = sub.add_parser("ask", help="answer a question about one or more images")
    ask.add_argument("question")
    ask.add_argument("--image", action="append", required=True, help="image path (repeat for several images)")
    ask.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the bundled tiny model)")
    ask.add_argument("--max-new-tokens", type=int, default=64)
    ask.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ask.add_argument("--task", choices=["docvqa"], default=None,
                     help="ask as the task is evaluated: docvqa appends its prompt ('Answer the question using a "
                          "single word or phrase.'), as the bundled model was trained")
    add_device_args(ask)
    ask.set_defaults(func=_ask)

    add_train_args(sub)
    merge = sub.add_parser("merge", help="fold a PEFT LoRA adapter into its base model and save the result",
                           description="Load BASE, apply the PEFT adapter folder ADAPTER (a training run's "
                                       "final/adapter), merge it into the weights and save_pretrained to OUT "
                                       "with BASE's tokenizer or processor.")
    merge.add_argument("base", help="base checkpoint folder or hub id (the model the adapter was trained on)")
    merge.add_argument("adapter", help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    merge.add_argument("out", help="output folder for the merged model")
    merge.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                       help="dtype the base is loaded, merged and saved in (default: %(default)s)")
    merge.add_argument("--overwrite", action="store_true", help="replace OUT if it is not empty")
    merge.set_defaults(func=_merge)
    add_eval_args(sub)
    add_score_args(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
