# nanoft — `make demo` and `make test` each set up everything they need in .venv.
# torch is pinned to the local CPU wheel and installed FIRST, so nothing pulls a CUDA build.
VENV      ?= .venv
PY        := $(VENV)/bin/python
DATA_DIR  ?= $(abspath ../shared/data)
TORCH     ?= torch==2.13.0
export NANOFT_DATA_DIR ?= $(DATA_DIR)

.PHONY: install test test-fast demo bench clean

$(VENV)/.installed: setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The whole suite (incl. the slow real-checkpoint tests), through the installed package.
test: install
	$(VENV)/bin/pytest -q --durations=15

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow"

# Fine-tune the real MiniLM checkpoint on (a documented subset of) SST-2 and print dev accuracy.
demo: install
	@echo "nanoft demo: fine-tune MiniLM-L6 (real checkpoint) on a seeded 12,000-example subset of SST-2 train"
	@echo "(of 67,349; a subset so the demo ends in minutes on a 2-core CPU), evaluate on the full dev set (872)."
	$(VENV)/bin/nanoft train --task sst2 --data-dir $(DATA_DIR) --train-subset 12000 --epochs 1 \
		--batch-size 32 --lr 1e-4 --output runs/demo --overwrite

bench: install
	$(VENV)/bin/nanoft bench train --data-dir $(DATA_DIR)

clean:
	rm -rf $(VENV) build *.egg-info runs
