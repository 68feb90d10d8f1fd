# The README's two commands are `make demo` and `make test`; everything else is a step they call.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test native bench clean

$(STAMP): pyproject.toml $(wildcard setup.py)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

native: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

demo: native
	$(PY) artifacts/demo.py

test: native
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

bench: native
	$(PY) bench/convert.py
	$(PY) bench/decode.py

clean:
	rm -rf build native/build runtime/_asw*.so *.egg-info .pytest_cache
