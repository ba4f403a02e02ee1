# The two commands of the README: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install system-deps detectron2 detectron2-if-available demo test test-slow bench clean

# torch/torchvision are pinned (with everything else) in constraints.txt; pip takes them from
# the package index, never the +cpu wheel (no torchvision build matches it).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/harness run --method cpc_v2 --eval all
	$(VENV)/bin/harness leaderboard build --output-dir leaderboard_site

# The Slurm tests (tests/test_slurm.py) start a real single-node cluster from Debian's
# slurm-wlm and munge; submitit's code snapshot needs rsync; the leaderboard's page tests a real
# Chromium. Installed here when missing and running as root with apt-get; otherwise those tests
# are skipped and say why.
system-deps:
	@if [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/munged ] || ! command -v rsync >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing slurm-wlm, munge, rsync (apt-get)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q slurm-wlm munge rsync >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge rsync >/dev/null; }; \
	  else echo "note: slurm-wlm/munge/rsync missing and not root with apt-get: the Slurm tests will be skipped"; fi; \
	fi
	@# The leaderboard's page tests drive a real headless Chromium (Debian's package).
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt-get)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	  else echo "note: chromium missing and not root with apt-get: the leaderboard's browser tests will be skipped"; fi; \
	fi

# detectron2 (optional; not on PyPI) for `--eval detection` with backend=detectron2. Built from
# DETECTRON2_SRC: a source folder, an archive, or a pip URL (default: its git repository, or the
# source snapshot in ../shared/vendor/ where one sits beside this clone), always with
# --no-build-isolation, into a wheel cached per machine (tools/build_detectron2.py).
D2_VENDORED := $(firstword $(wildcard ../shared/vendor/detectron2-*.tar.gz))
DETECTRON2_SRC ?= $(or $(D2_VENDORED),git+https://github.com/facebookresearch/detectron2.git)
detectron2: install
	$(PY) tools/build_detectron2.py "$(DETECTRON2_SRC)"

# make test builds it where a snapshot is at hand (so its tests run for real) and otherwise
# leaves it out: those tests then skip and say why.
detectron2-if-available: install
	@if [ -n "$(D2_VENDORED)" ] || [ -n "$$DETECTRON2_SRC" ]; then $(MAKE) --no-print-directory detectron2; \
	else echo "note: no detectron2 source (DETECTRON2_SRC unset, no ../shared/vendor snapshot): its tests will be skipped"; fi

# Layer rules first (import-linter contracts in pyproject.toml), then the tests.
test: install system-deps detectron2-if-available
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# Tests marked slow (none at present: every method's checks run in `make test`).
test-slow: install
	$(PY) -m pytest -q -m slow || test $$? -eq 5

bench: install
	$(PY) bench/demo_time.py
	$(PY) bench/beats_random.py

clean:
	rm -rf runs leaderboard_site mlflow.db mlartifacts
