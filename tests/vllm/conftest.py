"""The vLLM plugin tests run in vLLM's own venv (``make test-vllm``) and compare against our models, which run in
the project's venv (tests/vllm/reference.py, called as a subprocess by tests/vllm/harness.py). In the project's
venv, where vLLM is not installed, only what needs no vLLM engine is collected."""

import os

try:
    import vllm  # noqa: F401
except ImportError:  # the project's own venv: only the tests that need no engine run (test_weights.py)
    collect_ignore = ["test_lm.py", "test_vl.py", "test_image_attention.py", "test_serve.py", "test_tensor_parallel.py",
                      "test_tensor_parallel_vl.py"]

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: faster, debuggable
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")          # GiB; the default would take a large share of RAM
