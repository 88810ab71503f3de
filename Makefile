# daxfs developer entry points.  Every target installs what it needs first
# (Debian packages, a virtual environment with the package and its C core).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(CURDIR)/$(VENV)/bin/python
APT_PKGS := fuse3 libfuse3-dev pkg-config fio xfsprogs attr git gcc make python3-venv python3-dev
MNT ?= $(CURDIR)/mnt
PYTEST_ARGS ?=

.PHONY: all deps venv run stop test test-quick bench bench-quick bench-native lint sanitize crashtest clean

all: venv

# Debian packages, installed only when one is missing (CI runs as root on a fresh box).
deps:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi
	@grep -qs fusectl /proc/mounts || mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null || true

$(VENV)/.installed: pyproject.toml setup.py native/*.c native/*.h native/*.py | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@for s in mount.fuse.daxfs; do ln -sf $(CURDIR)/$(VENV)/bin/$$s /sbin/$$s 2>/dev/null || true; done
	touch $@

venv: deps $(VENV)/.installed

# The quick start: default image, mounted on ./mnt, a short real workload on it.
run: venv
	@MNT=$(MNT) PY=$(PY) scripts/demo.sh

stop:
	-$(PY) -m daxfs umount $(MNT)

test: venv
	$(PY) -m ruff check daxfs native tests bench scripts
	PYTHON=$(PY) native/sanitize.sh
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

test-quick: venv
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS) tests

# Peers (tmpfs, libfuse's passthrough_ll, pyfuse3's passthroughfs) and daxfs in one
# run; figures, ratios, JSON and a chart in bench-results/ (docs/PERFORMANCE.md).
bench: venv
	$(PY) -m pip install -q -e '.[bench]'
	bash bench/build_passthrough.sh $(PY)
	$(PY) bench/harness.py --out bench-results

bench-quick: venv
	$(PY) -m pip install -q -e '.[bench]'
	bash bench/build_passthrough.sh $(PY)
	$(PY) bench/harness.py --quick --out bench-results

bench-native: venv
	$(PY) bench/native_bench.py

lint: venv
	$(PY) -m ruff check daxfs native tests bench scripts

# The long crash run (issue: >= 100,000 crash states, 500 kill -9 cycles, 20,000
# corrupted images); scale with CRASHTEST_ARGS="--states N --kills N --images N".
crashtest: venv
	$(PY) scripts/crashtest.py $(CRASHTEST_ARGS)

sanitize: venv
	PYTHON=$(PY) native/sanitize.sh

clean:
	rm -rf build *.egg-info daxfs/_*.so daxfs/_*.c native/_*.c bench-results .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
