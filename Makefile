# make setup   one virtual environment (.venv) with requirements.txt
# make demo    all four stages on CPU with a tiny BLOOM (no GPU, no download), then the tables
# make test    the test suite (CPU, offline; the SLURM tests need root and Debian's slurm packages)
PYTHON ?= python3
VENV := .venv

setup: $(VENV)/installed
$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

demo: setup
	$(VENV)/bin/python tools/make_tiny.py tiny
	bash tools/demo.sh tiny

test: setup
	$(VENV)/bin/python -m pytest -q tests

.PHONY: setup demo test
