"""`python -m zaya_vl.eval_vl [eval] --model M --output DIR ...`, also under `accelerate launch -m zaya_vl.eval_vl`
(items are split over the processes); `python -m zaya_vl.eval_vl score ...` scores a predictions file."""

import sys

from .cli import main

argv = sys.argv[1:]
if not argv or argv[0] not in ("eval", "score"):
    argv = ["eval", *argv]
sys.exit(main(argv))
