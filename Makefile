# vstore: everything a fresh Debian 12 machine needs, installed on demand.
#   make test   install what is missing, then run the whole test suite
#   make demo   install what is missing, then start a local cluster (see README)
#   make bench  install what is missing, then run the benchmarks (results in bench/results/)
#   make soak   the long runs: the Raft simulator over thousands of seeds (SEEDS=N per
#               scenario), then every nemesis row with long faults and a long thrash
#               (THRASH_S, default 1800); per-fault figures in bench/results/soak.json

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Debian packages: FUSE and the headers pyfuse3 builds against; a compiler and Python
# headers for the C extensions; venv; openssl for TLS test certificates; nftables,
# iproute2 and e2fsprogs for the failure-injection and container-disk tests; chromium for
# the dashboard's browser test (Playwright drives Debian's build: `playwright install`
# downloads browsers from a CDN and is never run).
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv openssl \
                nftables iproute2 e2fsprogs util-linux chromium

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo bench soak install system-packages clean

# Two pytest workers, one test file each at a time (a module's cluster stays in one worker):
# most tests wait on real timers and processes, so two run in about the time of one.
# JOBS=0 runs serially; ordinary pytest runs (no -n) are serial too.
JOBS ?= 2

test: install
	$(PY) -m ruff check vstore tests bench
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile

demo: install
	$(VENV)/bin/vstore demo

bench: install
	$(PY) bench/rpc.py
	$(PY) bench/raft.py
	$(PY) bench/metadata.py
	$(PY) bench/chunkserver.py
	$(PY) bench/fs.py

# thousands of seeds per Raft simulator scenario (the default suite runs a few hundred),
# then the nemesis rows with RELIABILITY.md's long fault lengths and the long thrash
soak: install
	VSTORE_SIM_SEEDS=$${SEEDS:-3000} $(PY) -m pytest tests/unit/raft/test_raft_sim.py -q -x
	mkdir -p bench/results
	VSTORE_THRASH_S=$${THRASH_S:-1800} VSTORE_F3_PAUSE_S=80 VSTORE_F4_PARTITION_S=30 VSTORE_F7_PAUSE_S=60 \
	  VSTORE_PAGES_MIB=256 \
	  VSTORE_NEMESIS_MEASURE=$(CURDIR)/bench/results/soak.json \
	  $(PY) -m pytest tests/fault/test_nemesis_rows.py -q -s -p no:cacheprovider

install: system-packages $(STAMP)

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
