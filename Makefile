# imd: `make run` sets everything up and runs the daemon; `make test` runs the suite.
# PYTHON=pypy3 runs both on PyPy (Debian's pypy3, installed by bin/ensure-pypy),
# each interpreter in its own venv: .venv for python3, .venv-pypy3 for pypy3.
PYTHON  ?= python3
VENV    ?= $(if $(filter python3,$(PYTHON)),.venv,.venv-$(notdir $(PYTHON)))
CONFIG  ?= etc/imd.ini
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
# The JavaScript SDK's built ES modules: the web test page imports them
# (the http role serves them under /sdk/) and the wheel carries them (imd/sdk).
SDK     := clients/js/dist/index.js

.PHONY: install sdk services chromium promtool keys schema run test test-js test-plain-autobahn lint clean bench faults

# pip needs clients/js/dist (setup.cfg maps it into the package): built first
$(STAMP): setup.cfg pyproject.toml | $(SDK)
	$(if $(findstring pypy,$(PYTHON)),bin/ensure-pypy)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# compat mode puts the checkout on sys.path, so twistd finds twisted/plugins/imd_plugin.py
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP) $(SDK)

# npm ci (typescript, from package-lock.json) and tsc: again when a source changes
$(SDK): clients/js/package.json clients/js/package-lock.json clients/js/tsconfig.json $(wildcard clients/js/src/*.ts)
	cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm run build

sdk: $(SDK)

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
# The JavaScript SDK's tests run first (seconds); trial runs even when they
# fail, so its summary still ends the output (.ci/run reads it), and a
# failure of either makes `make test` fail.
test: install services chromium promtool
	$(MAKE) --no-print-directory test-js; js=$$?; \
	$(VENV)/bin/trial $(TRIAL_ARGS) tests || exit $$?; \
	if [ $$js != 0 ]; then echo "make test: the SDK's tests failed (make test-js)" >&2; fi; \
	exit $$js

# The JavaScript/TypeScript SDK in clients/js: its dev dependencies from
# package-lock.json, then `npm test` (tsc builds dist/ and the tests, node --test runs them).
test-js:
	cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm test

# The WebSocket tests again on stock Autobahn (imd/transport/autobahn_tuning.py off).
WS_TESTS ?= tests.test_messages tests.test_login tests.test_limits tests.test_idle tests.test_protocol \
	tests.test_shutdown tests.test_nodes tests.test_platform tests.test_history tests.test_tls
test-plain-autobahn: install services
	IMD_PLAIN_AUTOBAHN=1 $(VENV)/bin/trial $(TRIAL_ARGS) $(WS_TESTS)

# Type annotations of imd/ (mypy) and lint of imd/, tests/, bench/ (ruff);
# then the uses of typing.Any in imd/, counted and printed: above the ceiling
# in .ci/any-ceiling fails (it only goes down: lower it when the count does).
lint: install
	$(VENV)/bin/ruff check imd tests bench
	$(VENV)/bin/mypy
	$(PY) .ci/count_any.py

# bench/run.py: imd on CPython (.venv) and on PyPy (.venv-pypy3, built here
# when missing, as `make install PYTHON=pypy3`; its rows are skipped, saying
# why, when it cannot be) against the original design's Node stack
# (bench/original: ws server + migrator), the bare Node relay
# (bench/baseline_node.js) and the Python baseline relay
# (bench/baseline_relay.py), driven by the Node load generator bench/loadgen;
# own Redis db 9 and MySQL imd_bench(_pypy, _orig). One run at a time: it
# holds an flock on /tmp/imd-bench.lock.
bench: install services
	cd bench && npm ci --no-audit --no-fund --silent
	$(if $(findstring --no-pypy,$(BENCH_ARGS)),,$(MAKE) --no-print-directory install PYTHON=pypy3 || \
	  echo "bench: could not build .venv-pypy3: imd on PyPy will not be measured" >&2)
	$(PY) bench/run.py $(BENCH_ARGS)

# issue 8, long variants (docs/reliability.md): ten times the messages and
# five cycles per fault (five Sentinel failovers per test in
# tests.test_sentinel), 3000 hypothesis examples, a 60 s fuzz; bounded by
# timeout. Figures: one JSON line per fault in bench/results/faults-last-run.jsonl.
FAULTS_TIMEOUT ?= 1500
faults: install services
	mkdir -p bench/results && rm -f bench/results/faults-last-run.jsonl
	IMD_FAULTS=long IMD_FAULTS_REPORT=$(CURDIR)/bench/results/faults-last-run.jsonl \
	  timeout $(FAULTS_TIMEOUT) $(VENV)/bin/trial $(TRIAL_ARGS) tests.test_faults tests.test_security \
	  tests.test_limits tests.test_migrator_crash tests.test_sentinel
	cat bench/results/faults-last-run.jsonl

clean:
	rm -rf $(VENV) _trial_temp build dist *.egg-info clients/js/dist clients/js/build
