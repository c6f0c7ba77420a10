# imd: `make run` sets everything up and runs the daemon; `make test` runs the suite.
VENV    ?= .venv
PYTHON  ?= python3
CONFIG  ?= etc/imd.ini
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp

.PHONY: install services chromium promtool keys schema run test clean bench faults

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# compat mode puts the checkout on sys.path, so twistd finds twisted/plugins/imd_plugin.py
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

services:
	bin/ensure-services

# Debian's chromium for tests/test_browser.py (skipped, saying why, where it cannot be installed)
chromium:
	bin/ensure-chromium

# promtool (from Debian's prometheus package, the binary alone) for the alert
# rule checks of tests/test_monitoring.py (skipped, saying why, without it)
promtool: install
	bin/ensure-promtool $(VENV)/bin

keys: install services
	$(VENV)/bin/imd-admin --config $(CONFIG) keys init

# create the MySQL database or bring it to the newest sql/NNN_*.sql (idempotent)
schema: install services
	$(VENV)/bin/imd-admin --config $(CONFIG) schema apply

run: keys schema
	$(VENV)/bin/twistd -n --pidfile= imd --config $(CONFIG)

# Each trial process (each worker of TRIAL_ARGS=-j2 too) leases a Redis db and
# a MySQL database of its own and removes them at exit (tests/isolation.py):
# two `make test` can run at once, beside `make run`.
test: install services chromium promtool
	$(VENV)/bin/trial $(TRIAL_ARGS) tests

# bench/run.py: imd vs the baseline relay (bench/baseline_relay.py), driven by
# the Node load generator bench/loadgen; own Redis db 9 and MySQL imd_bench.
bench: install services
	cd bench && npm ci --no-audit --no-fund --silent
	$(PY) bench/run.py $(BENCH_ARGS)

# issue 8, long variants (docs/reliability.md): ten times the messages and
# five cycles per fault (five Sentinel failovers per test in
# tests.test_sentinel), 3000 hypothesis examples, a 60 s fuzz; bounded by
# timeout. Figures: one JSON line per fault in bench/faults/last-run.jsonl.
FAULTS_TIMEOUT ?= 1500
faults: install services
	rm -f bench/faults/last-run.jsonl
	IMD_FAULTS=long IMD_FAULTS_REPORT=$(CURDIR)/bench/faults/last-run.jsonl \
	  timeout $(FAULTS_TIMEOUT) $(VENV)/bin/trial $(TRIAL_ARGS) tests.test_faults tests.test_security \
	  tests.test_limits tests.test_migrator_crash tests.test_sentinel
	cat bench/faults/last-run.jsonl

clean:
	rm -rf $(VENV) _trial_temp build *.egg-info
