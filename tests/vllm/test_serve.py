"""The OpenAI-compatible server (what ``vllm serve`` runs) answers a chat request with an image sent as a
``data:`` URI exactly as ``zaya-vl ask`` answers the same question about the same image (greedy)."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from harness import ROOT, reference_python, run_reference  # noqa: E402

pytestmark = pytest.mark.timeout(1800)

QUESTION = "What is the total?"
MAX_NEW = 8
STARTUP_LIMIT_S = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ask(checkpoint: Path, image: Path) -> str:
    """Our CLI's answer, in the project's venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "PYTHONPATH"))}
    result = subprocess.run([reference_python(), "-m", "zaya_vl.cli", "ask", "--model", str(checkpoint),
                             "--image", str(image), "--max-new-tokens", str(MAX_NEW), QUESTION],
                            capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return result.stdout.rstrip("\n")


def _post(port: int, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def test_chat_completion_with_data_uri_image_equals_zaya_vl_ask(tmp_path):
    image = tmp_path / "page.png"
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (70, 100, 3), dtype=np.uint8)).save(image)
    spec = {"config": {"head_dim": 32}, "image_attention": "causal", "seed": 1, "std": 0.3, "max_new": 1,
            "prompts": []}
    run_reference("vl", spec, tmp_path)
    checkpoint = tmp_path / "checkpoint"
    expected = _ask(checkpoint, image)
    assert expected, "zaya-vl ask gave an empty answer: nothing to compare"

    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server as users run it: engine in its own process
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
         "--served-model-name", "zaya", "--dtype", "float32", "--enforce-eager", "--no-enable-prefix-caching",
         "--max-model-len", "512", "--max-num-seqs", "2", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while True:
            assert server.poll() is None, f"the server exited:\n{(tmp_path / 'server.log').read_text()[-4000:]}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(2)
        data_uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
        reply = _post(port, {
            "model": "zaya", "temperature": 0, "max_tokens": MAX_NEW,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri}},
                                                      {"type": "text", "text": QUESTION}]}],
        })
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    answer = reply["choices"][0]["message"]["content"]
    assert reply["usage"]["completion_tokens"] == MAX_NEW or reply["choices"][0]["finish_reason"] == "stop"
    assert answer.strip() == expected  # `zaya-vl ask` prints the decoded reply stripped
