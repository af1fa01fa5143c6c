# Two commands set everything up on a fresh machine:
#   make demo   install, then index the bundled sample and answer its queries (BM25 + dense)
#   make test   install, then run the test suite (what CI runs)
PYTHON ?= python3
PIP = $(PYTHON) -m pip install -q -c constraints.txt

.PHONY: install demo test test-fast
install:
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"

demo: install
	retrieval demo

test: install
	$(PYTHON) -m pytest -q

test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"
