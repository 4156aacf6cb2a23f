"""`zaya-vl train CONFIG [--resume [CHECKPOINT]] [--set KEY=VALUE ...]`.

`zaya_vl/cli.py` mounts it with ``add_train_args(subparsers)``. For several processes or GPUs launch the
module with accelerate: ``accelerate launch --config_file examples/accelerate/fsdp.yaml -m zaya_vl.training
CONFIG``.
"""

from __future__ import annotations

import argparse
import logging
import sys


def add_train_args(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help="train or fine-tune from a YAML config (see training/README.md)",
                                   description="Train or fine-tune ZAYA1 / ZAYA1-VL from a YAML config.")
    _arguments(parser)
    parser.set_defaults(func=train_command)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (examples/train/*.yaml)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="continue from the newest complete checkpoint in output_dir (or start fresh if there "
                             "is none and no finished run), or from the CHECKPOINT folder given")
    parser.add_argument("--overwrite", action="store_true",
                        help="start fresh in an output_dir that holds an earlier run (its final/, metrics.jsonl and "
                             "checkpoints are deleted first)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.max_steps=10 (repeatable)")


def train_command(args: argparse.Namespace) -> int:
    from zaya_vl.training.config import ConfigError, load_config
    from zaya_vl.training.data import DataError
    from zaya_vl.training.trainer import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.overrides)
        result = train(config, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, DataError, FileNotFoundError) as error:
        print(f"zaya-vl train: {error}", file=sys.stderr)
        return 2
    where = f"; model saved to {result.final_dir}" if result.final_dir else ""
    print(f"trained {result.steps} steps in {result.output_dir}{where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zaya_vl.training",
                                     description="Train or fine-tune ZAYA1 / ZAYA1-VL from a YAML config.")
    _arguments(parser)
    return train_command(parser.parse_args(argv))


__all__ = ["add_train_args", "main", "train_command"]
