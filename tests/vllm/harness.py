"""Helpers of the two-venv vLLM tests: reference outputs from our models (project venv) and comparisons."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def reference_python() -> str:
    """The project's venv python (transformers >= 5.24), where our reference models run."""
    python = os.environ.get("ZAYA_REFERENCE_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
    if not Path(python).exists():
        pytest.skip(f"no project venv at {python} (set ZAYA_REFERENCE_PYTHON) to compute reference outputs")
    return python


def run_reference(kind: str, spec: dict, out_dir: Path) -> list[dict]:
    """Build a tiny checkpoint and our model's greedy outputs for ``spec`` in the project's venv."""
    spec_file = out_dir / "spec.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "PYTHONPATH"))}
    result = subprocess.run([reference_python(), str(ROOT / "tests" / "vllm" / "reference.py"), kind,
                             str(spec_file), str(out_dir)], capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"reference run failed:\n{result.stderr[-4000:]}")
    return json.loads((out_dir / "reference.json").read_text())


TP = 2  # ranks of the tensor-parallel tests


def tp_engine(checkpoint, **kwargs):
    """An fp32 engine over TP ranks on CPU."""
    from vllm import LLM

    with pytest.MonkeyPatch.context() as env:
        # vLLM binds each CPU rank's threads to a NUMA node of its own by default; a test machine may have one.
        env.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        return LLM(model=str(checkpoint), dtype="float32", enforce_eager=True, enable_prefix_caching=False,
                   seed=0, tensor_parallel_size=TP, **kwargs)


def chosen_logprobs(completion) -> list[float]:
    """Each step's log-probability of the token vLLM chose."""
    return [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)]


def assert_matches(outputs, references, tolerance: float = 1e-4) -> None:
    for index, (output, reference) in enumerate(zip(outputs, references, strict=True)):
        completion = output.outputs[0]
        assert list(completion.token_ids) == reference["tokens"], f"prompt {index}: greedy tokens differ"
        diffs = [abs(a - b) for a, b in zip(chosen_logprobs(completion), reference["logprobs"], strict=True)]
        assert max(diffs) < tolerance, f"prompt {index}: log-prob differs by {max(diffs):.2e}"


def release(llm) -> None:
    """Shut an in-process engine down so the next test module can start its own."""
    import gc

    from vllm.distributed import cleanup_dist_env_and_memory

    llm.llm_engine.engine_core.shutdown() if hasattr(llm.llm_engine, "engine_core") else None
    del llm
    gc.collect()
    cleanup_dist_env_and_memory()


def image_requests(spec: dict) -> list[dict]:
    """vLLM requests for a reference spec's prompts (text with ``<image>`` placeholders and image files)."""
    from PIL import Image

    return [{"prompt": p["text"],
             "multi_modal_data": {"image": [Image.open(path).convert("RGB") for path in p["images"]]}}
            if p["images"] else {"prompt": p["text"]} for p in spec["prompts"]]


def generate_images(llm, requests: list[dict], max_new: int):
    """Greedy generation with each chosen token's log-probability."""
    from vllm import SamplingParams

    return llm.generate(requests, SamplingParams(temperature=0, max_tokens=max_new, logprobs=0), use_tqdm=False)


def write_images(out: Path, sizes: list[tuple[int, int]], seed: int) -> list[str]:
    """Random RGB PNGs of the given (width, height) sizes in ``out``; their paths."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for index, (width, height) in enumerate(sizes):
        path = out / f"image{index}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths
