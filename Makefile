# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp records what was installed; it is rebuilt only when pyproject.toml or
# constraints.txt (the exact known-good versions) changes,
# so a second `make` on a complete .venv costs a second, not a reinstall.
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' -c constraints.txt
	touch $(STAMP)

install: $(STAMP)

# --overwrite: a second `make demo` replaces the first one's demo-output (its own folder).
demo: $(STAMP)
	$(BIN)/transferkit demo --out demo-output --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do \
		$(BIN)/python -m benchmarks.$$(basename $$script .py) || exit 1; done

clean:
	rm -rf $(VENV) demo-output
