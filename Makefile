# Two entry points: `make demo` trains MISA on the shipped dataset, `make test` runs lint + tests.
# Both create .venv and install what they need from nothing.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

$(BIN)/activate:
	$(PY) -m venv $(VENV)

.PHONY: install demo test lint
install: $(BIN)/activate
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[tests,examples]"

demo: install
	$(BIN)/python sota-implementations/misa/misa_offline.py preset=demo compile.compile=true

lint:
	$(BIN)/black --check .
	$(BIN)/flake8 .

test: install lint
	$(BIN)/python -m pytest -q
