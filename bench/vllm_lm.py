"""Generation throughput of ZAYA1 served by vLLM (our plugin) against our own ``generate``, same weights.

    # in vLLM's venv (make test-vllm builds one at .venv-vllm); our side runs in the project's venv
    .venv-vllm/bin/python -m bench.vllm_lm                       # medium config, CPU, fp32, batch 1, 8, 32
    .venv-vllm/bin/python -m bench.vllm_lm --batch-sizes 1,8 --new-tokens 16 --json out.json
    python -m bench.vllm_lm --device cuda --dtype bfloat16 --preset zaya1-8b --batch-sizes 1,32,256 \
        --prompt-len 1024 --new-tokens 256 --reference-python /path/to/project/.venv/bin/python   # on a GPU

For each batch size: B prompts of ``--prompt-len`` random tokens, greedy, exactly ``--new-tokens`` new tokens
each (EOS ignored), timed end to end (prefill + decode) after a warm-up; median of ``--repeats``. Reported as
generated tokens per second and the ratio vLLM / ours. The checkpoint (random weights, routers calibrated so
tokens spread over experts as a trained model's do) and our timings come from the project's venv, which this
script calls as a subprocess (``--ours-only``): vLLM's venv pins an older transformers than ours.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Names only: the sizes live in zaya_vl.lm.presets, read on our side; the vLLM half runs in a venv without
# zaya_vl's dependencies and needs just the choice.
PRESETS = ("medium", "zaya1-8b")


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _prompts(batch: int, prompt_len: int, vocab: int) -> list[list[int]]:
    import random

    rng = random.Random(batch)
    return [[rng.randrange(3, vocab) for _ in range(prompt_len)] for _ in range(batch)]


# -- our side (project venv) --------------------------------------------------------------------------------
def ours(args) -> None:
    import torch

    from bench.common import EXACT_LENGTH
    from zaya_vl.lm import ZayaLM
    from zaya_vl.lm.presets import lm_config
    from zaya_vl.testing import balance_routing_, randomize_

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "config.json").exists():
        model = ZayaLM(lm_config(args.preset))
        randomize_(model, seed=0, std=0.02 if args.preset == "zaya1-8b" else 0.05)
        calibration = torch.randint(3, model.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(1))
        balance_routing_(model.eval(), calibration)
        model.save_pretrained(checkpoint)
    model = ZayaLM.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    results = {}
    for batch in args.batch_sizes:
        input_ids = torch.tensor(_prompts(batch, args.prompt_len, model.config.vocab_size), device=device)

        @torch.no_grad()
        def run():
            out = model.generate(input_ids, max_new_tokens=args.new_tokens, do_sample=False, **EXACT_LENGTH)
            assert out.shape[1] == args.prompt_len + args.new_tokens
            if device.type == "cuda":
                torch.cuda.synchronize()

        results[batch] = batch * args.new_tokens / _median_seconds(run, args.repeats)
    Path(args.json_out).write_text(json.dumps(results))


# -- vLLM side (vLLM venv) ----------------------------------------------------------------------------------
def vllm_side(args, checkpoint: Path) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    # The engine in this process, as the tests run it (a separate engine process stalled on this 2-core machine).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(checkpoint), dtype=args.dtype, enforce_eager=args.device == "cpu",
              enable_prefix_caching=False, skip_tokenizer_init=True,
              max_model_len=args.prompt_len + args.new_tokens + 8, max_num_seqs=max(args.batch_sizes), seed=0)
    vocab = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
    params = SamplingParams(temperature=0, max_tokens=args.new_tokens, min_tokens=args.new_tokens, ignore_eos=True,
                            detokenize=False)
    results = {}
    for batch in args.batch_sizes:
        prompts = [TokensPrompt(prompt_token_ids=p) for p in _prompts(batch, args.prompt_len, vocab)]

        def run():
            outputs = llm.generate(prompts, params, use_tqdm=False)
            assert all(len(o.outputs[0].token_ids) == args.new_tokens for o in outputs)

        results[batch] = batch * args.new_tokens / _median_seconds(run, args.repeats)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="medium")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--checkpoint", default=None, help="reuse (or write) the benchmark checkpoint here")
    parser.add_argument("--reference-python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--ours-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ours_only:
        ours(args)
        return 0

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(args.checkpoint or Path(folder) / "checkpoint")
        ours_json = Path(folder) / "ours.json"
        command = [args.reference_python, "-m", "bench.vllm_lm", "--ours-only", "--json-out", str(ours_json),
                   "--checkpoint", str(checkpoint), "--preset", args.preset, "--device", args.device,
                   "--dtype", args.dtype, "--batch-sizes", ",".join(map(str, args.batch_sizes)),
                   "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
                   "--repeats", str(args.repeats)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "PYTHONPATH"))}
        subprocess.run(command, check=True, cwd=ROOT, env=env)
        ours_tok_s = {int(k): v for k, v in json.loads(ours_json.read_text()).items()}
        vllm_tok_s = vllm_side(args, checkpoint)

    rows = [{"batch": b, "ours_tok_s": ours_tok_s[b], "vllm_tok_s": vllm_tok_s[b],
             "vllm_over_ours": vllm_tok_s[b] / ours_tok_s[b]} for b in args.batch_sizes]
    print(f"\n{args.preset}, {args.device}, {args.dtype}, prompt {args.prompt_len}, {args.new_tokens} new tokens "
          "(generated tokens/s, end to end)")
    print(f"{'batch':>6} {'zaya_vl generate':>17} {'vllm.LLM':>10} {'vllm/ours':>10}")
    for row in rows:
        print(f"{row['batch']:>6} {row['ours_tok_s']:>17.1f} {row['vllm_tok_s']:>10.1f} {row['vllm_over_ours']:>10.2f}")
    result = {"config": {k: v for k, v in vars(args).items() if k not in ("ours_only", "json_out")}, "rows": rows}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
