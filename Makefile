# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch is installed first, on its own, so that CI and laptops without a GPU take the
# CPU build; GPU machines override it, e.g. `make install TORCH='torch'` (PyPI's CUDA build).
TORCH  ?= torch==2.13.0

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m hatstream.demo

test: install
	$(PY) -m pytest -q

# Benchmarks are scripts, not tests: they print figures for benchmarks/RESULTS.md.
# The model comparison needs the reference (spandrel), a benchmark-only extra.
bench: install
	$(PY) -m pip install -q --no-deps "spandrel>=0.4.2" einops
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info
