# fieldgate: the two set-up commands.
#   make demo  - install the runtime extras only, start simulated devices, a local
#                broker, the gateway and its status page, and print where to look
#   make test  - install the runtime and test extras and run the whole test suite
#                (with the short fault campaign)
#   make test-quick - the same without the tests marked slow
#   make faults - the fault campaign, long form (docs/faults.md)
# Both work on a fresh Debian / Raspberry Pi OS machine (they use sudo for apt
# when not run as root).

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
# The demo needs only what its simulated devices and the status page use; not
# coap-dtls (it compiles tinydtls, minutes on a Raspberry Pi) and not the test
# extras (Playwright, schemathesis, hypothesis, dbusmock, ...).
DEMO_EXTRAS ?= modbus,serial,ble,coap,web
TEST_EXTRAS ?= all,test
APT_PKGS := mosquitto mosquitto-clients chromium dbus libdbus-1-dev libglib2.0-dev pkg-config autoconf automake libtool
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# Test workers (pytest-xdist). Most tests wait on real peers (a broker, a pty, a device
# simulator) rather than compute, so three workers on two cores cut the wall time without
# starving them; the slow trials are collected first (tests/conftest.py) so they do not form
# the tail. PYTEST_WORKERS=0 runs in one process (for debugging with -s or pdb).
PYTEST_WORKERS ?= 3

.PHONY: demo test test-quick deps demo-deps apt lint typecheck bench faults clean

demo: demo-deps
	$(VENV)/bin/fieldgate demo $(DEMO_ARGS)

test: deps
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# The edit-test loop on a small machine: everything but the long end-to-end trials
# (kill -9 rounds, stalled lines) marked `slow`; `make test` and CI still run them.
test-quick: deps
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

# One stamp per set of extras: `make test` after `make demo` adds the test extras
# to the same venv; `make demo` after `make test` installs nothing.
demo-deps: apt $(VENV)/.installed-demo
deps: apt $(VENV)/.installed-test

# System packages: a broker for tests and the demo, Chromium for the status page's browser
# tests (driven by Playwright; no browser download), D-Bus and its headers for the BLE tests
# (python-dbusmock's BlueZ on a private bus), the autotools that build tinydtls for CoAP
# DTLS-PSK, and venv support for Python.
apt:
	@missing=""; \
	for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fieldgate needs Python >= 3.11")'

$(VENV)/.installed-demo: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e '.[$(DEMO_EXTRAS)]'
	@touch $@

$(VENV)/.installed-test: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e '.[$(TEST_EXTRAS)]'
	@touch $@ $(VENV)/.installed-demo

lint: deps
	$(PIP) install -q ruff mypy types-PyYAML types-protobuf
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# mypy strict over the installed layout, drivers included (fieldgate, fieldgate.drivers): the
# configuration ([tool.mypy] in pyproject.toml) points it at .typecheck/fieldgate, a committed
# tree of links that mirrors the package (setuptools' editable install is an import hook mypy
# cannot see); tests/test_typecheck_layout.py keeps the tree complete. Plain `mypy` does the same.
typecheck:
	$(PIP) install -q mypy types-PyYAML types-protobuf
	$(VENV)/bin/mypy

bench: deps
	for b in bench/*.py; do [ "$$b" = bench/faults.py ] && continue; echo "== $$b"; $(PY) $$b || exit 1; done

# The fault campaign, long form (tens of minutes; needs root for the tmpfs of the disk-full row).
# `make test` runs its short form through tests/test_fault_campaign.py. FAULTS_ARGS: --seed N, --only NAME.
faults: deps
	$(PY) bench/faults.py $(FAULTS_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info demo-run test-artifacts
