# `make demo` and `make test` each set everything up on a fresh Python 3.11 machine first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# nnkd's data for the demo when the nnU-Net variables are not set already
DEMO_DATA ?= $(CURDIR)/nnkd_data
export nnUNet_raw ?= $(DEMO_DATA)/nnUNet_raw
export nnUNet_preprocessed ?= $(DEMO_DATA)/nnUNet_preprocessed
export nnUNet_results ?= $(DEMO_DATA)/nnUNet_results

.PHONY: setup demo test coverage

setup: $(VENV)/.installed

# nnkd is installed editable, so pip compiles every package's bytecode but nnkd's: compileall does it once, or each of
# the many short console-script processes of make test compiles nnkd again (Python never writes bytecode where
# PYTHONDONTWRITEBYTECODE is set, as on these machines)
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e ".[dev]"
	$(BIN)/python -m compileall -q nnkd
	touch $@

# The main job on the embedded default: a synthetic 2D dataset, plans, a teacher that learns every class, a
# distilled tiny student and, for comparison, the same student without KD (16 min on 2 CPU cores).
demo: setup
	BIN=$(BIN) bash scripts/demo.sh

# pytest's exit code 5 (no tests collected) counts as a failure. Two pytest-xdist workers, each taking whole test
# modules (--dist loadfile: a module's fixtures are built once; the modules that use the session's trained students
# go to one worker together, tests/conftest.py TRAINED_GROUP): much of a test's time is a console script importing
# torch and nnU-Net on one core, so two modules run side by side on 2 cores in little more than the time of one.
test: setup
	$(BIN)/python -m pytest tests -n 2 --dist loadfile --durations=15; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

# make test with line coverage of nnkd (pyproject's [tool.coverage.run]: the console scripts the tests start count too)
coverage: setup
	$(BIN)/python -m pytest tests -n 2 --dist loadfile --cov=nnkd --cov-report=term; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc
