# The two commands of the README: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-slow bench clean

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

test: install
	$(PY) -m pytest -q

# Tests marked slow (none at present: every method's checks run in `make test`).
test-slow: install
	$(PY) -m pytest -q -m slow || test $$? -eq 5

bench: install
	$(PY) bench/demo_time.py
	$(PY) bench/beats_random.py

clean:
	rm -rf runs leaderboard_site mlflow.db mlartifacts
