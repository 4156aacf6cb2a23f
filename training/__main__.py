"""``python -m zaya_vl.training CONFIG [--resume]`` (what ``accelerate launch -m zaya_vl.training`` runs)."""

import sys

from zaya_vl.training.cli import main

sys.exit(main())
