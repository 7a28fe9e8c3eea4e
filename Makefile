# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch is installed first, on its own, from the spec below. What that gives depends on the index:
# PyPI serves the CUDA build on Linux x86_64 (it runs on CPUs too, but is several GB) and CPU builds
# elsewhere. TORCH_INDEX=URL takes it from another index instead, e.g. PyTorch's CPU-only wheels.
# A changed TORCH or TORCH_INDEX reinstalls torch on the next `make install` (see $(TORCH_STAMP)).
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
TORCH_STAMP := $(VENV)/.torch-spec
# The reference HAT that the tests compare against, live (tests/hat_cases.py). --no-deps: spandrel
# asks for torchvision for architectures hatstream never compares with, and PyPI's torchvision is
# built against one torch release, which may not be the one installed above.
REFERENCE := spandrel==0.4.2 einops==0.8.2

.PHONY: install demo test test-quick bench clean FORCE

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "hatstream needs Python 3.11 or newer (tomllib); set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

# Rewritten only when the spec differs from the one installed, so that make sees it change.
$(TORCH_STAMP): $(VENV)/bin/python FORCE
	@echo '$(TORCH) $(TORCH_INDEX)' | cmp -s - $@ || { \
	  echo "installing $(TORCH) $(if $(TORCH_INDEX),from $(TORCH_INDEX))"; \
	  $(PY) -m pip install -q --force-reinstall $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)" && \
	  echo '$(TORCH) $(TORCH_INDEX)' > $@; }

$(VENV)/.installed: pyproject.toml $(TORCH_STAMP)
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps $(REFERENCE)
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m hatstream.demo

test: install
	$(PY) -m pytest -q --durations=25

# The same suite without the tests marked slow (Ray clusters, long clips): a quick check while working.
test-quick: install
	$(PY) -m pytest -q -m "not slow"

# Benchmarks are scripts, not tests: they print figures for benchmarks/RESULTS.md.
bench: install
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info
