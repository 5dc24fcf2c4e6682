# Two commands do all set-up on a fresh machine (Python >= 3.10):
#   make train   -- venv, install, train the small CPU recipe on bundled tiny Shakespeare, print a sample
#   make test    -- venv, install, run the test suite
VENV ?= .venv
PYTHON ?= python3
# The CPU build on machines that have it locally; set TORCH=torch (or a CUDA wheel) elsewhere.
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train test bench gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# accelerate launch would otherwise pin a CPU process to one thread (OMP_NUM_THREADS=1).
THREADS ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 1)

train: $(STAMP)
	$(VENV)/bin/accelerate launch --config_file accelerate_config.yaml --num_cpu_threads_per_process $(THREADS) \
		train.py recipes/shakespeare_cpu.yaml $(ARGS)

test: $(STAMP)
	$(PY) -m pytest tests $(ARGS)

bench: $(STAMP)
	$(PY) -m bdh_scale.bench $(ARGS)

# On a GPU machine (a CUDA build of torch: make gpu-check TORCH=torch); ARGS=--dry-run anywhere.
# The [gpu] extra (flash-linear-attention and its Triton) is installed for the real check only:
# a dry run replaces fla's kernel with its plain-PyTorch stand-in.
gpu-check: $(STAMP)
	$(if $(findstring --dry-run,$(ARGS)),,$(PY) -m pip install -q -e ".[gpu]")
	$(PY) -m bdh_scale.bench.gpu_check $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
