"""Shared test fixtures: the reference fixtures copied from shared/fixtures (see tests/fixtures/README.md)."""

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # The Triton kernel tests (tests/lm/kernels) run in Triton's CPU interpreter, which Triton reads when it is
    # imported — and torch._dynamo imports it along with zaya_vl.lm — so this must precede every other import.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

transformers.logging.set_verbosity_error()

REFERENCE_CASES = Path(__file__).parent / "fixtures" / "zaya1_vl_reference"


def load_reference_case(name: str) -> tuple[Path, dict]:
    """(reference-layout checkpoint folder, tensors the reference code computed) for a fixture case."""
    case = REFERENCE_CASES / name
    return case / "checkpoint", load_file(case / "case.safetensors")


@pytest.fixture(params=sorted(p.name for p in REFERENCE_CASES.iterdir() if p.is_dir()))
def reference_case(request):
    return (request.param, *load_reference_case(request.param))
