"""The lmms-eval adapter, driven through lmms-eval's own API: its registry finds `zaya_vl` by entry point, its
`Instance` requests go in, and the replies equal what VLAssistant gives for the same prompts."""

import json

import pytest

lmms_models = pytest.importorskip("lmms_eval.models", reason="lmms-eval is installed by `make test` (no deps)")
from lmms_eval.api.instance import Instance  # noqa: E402
from PIL import Image  # noqa: E402

from zaya_vl.data.synthetic import generate_dataset  # noqa: E402
from zaya_vl.eval_vl.lmms_adapter import ZayaVLLmms, truncate_at_stops  # noqa: E402
from zaya_vl.inference import VLAssistant  # noqa: E402
from zaya_vl.testing import tiny_vl_checkpoint  # noqa: E402


def test_lmms_eval_registry_finds_the_adapter_by_entry_point():
    assert lmms_models.get_model("zaya_vl") is ZayaVLLmms


def test_stop_strings_cut_at_the_earliest_one():
    assert truncate_at_stops("12.50\n\nQuestion: x", ["Question:", "\n\n"]) == "12.50"
    assert truncate_at_stops("12.50", ["Question:"]) == "12.50"


def test_generate_until_answers_lmms_eval_requests_like_our_assistant(tmp_path):
    tiny_vl_checkpoint(tmp_path / "model", seed=1)
    generate_dataset(tmp_path / "synth", n_train_docs=0, n_test_docs=3, seed=5, image_size=160)
    eval_dir = tmp_path / "synth" / "eval"
    docs = [json.loads(line) for line in (eval_dir / "docvqa.jsonl").read_text().splitlines()][:4]
    model = ZayaVLLmms.create_from_arg_string(f"pretrained={tmp_path / 'model'},batch_size=3,max_new_tokens=6")
    model.task_dict = {"docvqa_val": {"validation": docs}}

    def doc_to_visual(doc):
        return [Image.open(eval_dir / doc["image"]).convert("RGB")]

    gen_kwargs = {"max_new_tokens": 5, "temperature": 0, "until": ["\n\n"]}
    requests = [Instance(request_type="generate_until", idx=0,
                         arguments=(f"{doc['question']}\nAnswer the question using a single word or phrase.",
                                    gen_kwargs, doc_to_visual, i, "docvqa_val", "validation"),
                         metadata={"task": "docvqa_val", "doc_id": i, "repeats": 1})
                for i, doc in enumerate(docs)]
    replies = model.generate_until(requests)

    assistant = VLAssistant.from_pretrained(str(tmp_path / "model"))
    expected = assistant.generate([doc_to_visual(doc) for doc in docs],
                                  ["<image>" + r.args[0] for r in requests], max_new_tokens=5)
    assert replies == [truncate_at_stops(reply, ["\n\n"]) for reply in expected]
    with pytest.raises(NotImplementedError):
        model.loglikelihood(requests)


def test_model_args_are_checked_and_applied(tmp_path):
    import torch

    tiny_vl_checkpoint(tmp_path / "model", seed=1)
    with pytest.raises(ValueError, match=r"unknown --model_args \['max_pixel'\]"):
        ZayaVLLmms.create_from_arg_string(f"pretrained={tmp_path / 'model'},max_pixel=100000")
    with pytest.raises(ValueError, match="dtype='int8'"):
        ZayaVLLmms.create_from_arg_string(f"pretrained={tmp_path / 'model'},dtype=int8")
    with pytest.raises(ValueError, match="need 0 < min_pixels <= max_pixels"):
        ZayaVLLmms.create_from_arg_string(f"pretrained={tmp_path / 'model'},min_pixels=9000,max_pixels=4000")

    model = ZayaVLLmms.create_from_arg_string(
        f"pretrained={tmp_path / 'model'},min_pixels=3136,max_pixels=12544,dtype=bfloat16,device=cpu")
    assert (model.rank, model.world_size, model.device.type) == (0, 1, "cpu")
    assert model.model.dtype == torch.bfloat16
    processor = model.assistant.processor
    assert (processor.min_pixels, processor.max_pixels) == (3136, 12544)
    # A 560x560 page goes in at the set budget: at most 12544 pixels = 16 patches of 28x28 = 16 image tokens.
    page = Image.new("RGB", (560, 560), (255, 255, 255))
    inputs = processor(images=[[page]], text=["<image>hi"], return_tensors="pt")
    height, width = (int(v) * 14 for v in inputs["image_grid_thw"][0, 1:])
    assert height * width <= 12544 and (height, width) == processor.num_image_tokens((560, 560)).resized_hw


def test_each_process_of_a_launch_knows_its_rank(tmp_path):
    """Under `accelerate launch --num_processes 2` (CPU, gloo) each adapter reports its own rank and the world
    size, which lmms-eval uses to give each process its share of the requests."""
    import os
    import socket
    import subprocess
    import sys

    tiny_vl_checkpoint(tmp_path / "model", seed=1)
    script = tmp_path / "probe.py"
    reports_dir = tmp_path / "reports"
    reports_dir.mkdir()
    script.write_text(
        "import json, os, pathlib, sys\n"
        "from zaya_vl.eval_vl.lmms_adapter import ZayaVLLmms\n"
        "model = ZayaVLLmms.create_from_arg_string(f'pretrained={sys.argv[1]}')\n"
        "report = [model.rank, model.world_size, model.device.type, model.accelerator.num_processes]\n"
        "pathlib.Path(sys.argv[2], f'{os.getpid()}.json').write_text(json.dumps(report))\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
         "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), str(script),
         str(tmp_path / "model"), str(reports_dir)], capture_output=True, text=True, timeout=300, env=env)
    assert process.returncode == 0, process.stderr[-3000:]
    # One file a process, named by its pid: the two processes' prints to one shared pipe can interleave mid-line.
    reports = sorted(json.loads(path.read_text()) for path in reports_dir.glob("*.json"))
    assert reports == [[0, 2, "cpu", 2], [1, 2, "cpu", 2]]
