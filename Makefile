# Two commands on a fresh machine with only Python 3.10+:
#   make demo   install the core into .venv (no PyTorch, ~0.6 GB) and run the daemon on the embedded CPU default
#   make test   install into .venv (with test extras) and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# CPU build of PyTorch first (for `make install`/`make test`; `make demo` needs no torch): a bare
# `torch` requirement would pull GBs of CUDA wheels.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-slow bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Core dependencies only (ONNX Runtime, OpenVINO, numpy/scipy, ZeroMQ, ...; no PyTorch): all
# `make demo` needs. Training and export add torch: pip install -e ".[torch]" (README).
$(VENV)/.core-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# The test and tool extras on top (PyTorch CPU first, abTEM, MONAI, TensorBoard, Triton client, ...).
$(VENV)/.installed: $(VENV)/.core-installed
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,io,train,sim,triton,acquisition]"
# A real tritonserver (python backend only) for tests/test_triton.py. --no-deps: pytriton's own
# Python API pins numpy<2, we only run its bundled server binary. Linux x86_64/aarch64 wheels only.
	$(BIN)/pip install -q --no-deps "nvidia-pytriton==0.7.0" || echo "nvidia-pytriton not installable here: the Triton server tests will skip"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.core-installed
	$(BIN)/fringelive demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -m slow

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/preprocess_tiling.py
	$(BIN)/python benchmarks/daemon.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
