# `make demo`: set up .venv and run the whole workflow on the bundled digits.
# `make peers`: the same, with the peers' methods (dattri), on config/digits-peers.yaml (README: The peers' methods).
# `make test`: set up .venv if needed and run the whole test suite (.ci/run runs this, with a one-node SLURM cluster;
# .github/workflows/ci.yml runs `make test-fast`, `make lint` and `make dryrun-all`).
# `make test-fast`: the unit tests and static workflow checks, without whole workflow runs or SLURM (minutes).
# `make lint`: `snakemake --lint` and `snakefmt --check` on the Snakefile and workflow/rules (.github's CI runs it).
# `make dryrun-all`: the dry run of every shipped config as it is, its input files faked in a temporary folder
# (tests/test_workflow.py DIR writes them: full-size dataset listings, empty checkpoints and scores files).
VENV ?= .venv
PYTHON ?= python3
CORES ?= 2
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)

.PHONY: demo peers test test-fast dryrun dryrun-all lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml
	@echo "Report: $(CURDIR)/results/digits/report/report.md (tables: support.csv, plots: support_cdf.png, topk_grid.png)"

peers: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[peers]'
	$(BIN)/snakemake --cores $(CORES) --configfile config/digits-peers.yaml
	@echo "Report: $(CURDIR)/results/digits-peers/digits/report/report.md (the peers' methods beside simattr's)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

dryrun: $(STAMP)
	$(BIN)/snakemake -n --cores $(CORES) --configfile config/config.yaml

dryrun-all: $(STAMP)
	dir=$$(mktemp -d) && trap 'rm -rf "$$dir"' EXIT && $(BIN)/python tests/test_workflow.py "$$dir" && \
	for cfg in config/*.yaml "config/test.yaml examples/outside.yaml"; do \
	  echo "== dry run: $$cfg"; \
	  $(BIN)/snakemake -n -q rules --cores $(CORES) -d "$$dir" --configfile $$cfg || exit 1; \
	done

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile config/config.yaml
	$(BIN)/snakefmt --check Snakefile workflow/

clean:
	rm -rf results/digits .snakemake
