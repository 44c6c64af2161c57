# vstore: everything a fresh Debian 12 machine needs, installed on demand.
#   make test   install what is missing, then run the whole test suite
#   make demo   install what is missing, then start a local cluster (see README)
#   make bench  install what is missing (with fio and MooseFS), then compare vstore with local disk, a
#               FUSE passthrough and MooseFS (bench/run.py; BENCH_ARGS="--runs 1 ..." passes options;
#               bench/results/bench.{json,md,png})
#   make bench-components  the per-component benchmarks (rpc, raft, metadata, chunkserver, fs)
#   make soak   the long runs: the Raft simulator over thousands of seeds (SEEDS=N per
#               scenario), then every nemesis row with long faults and a long thrash
#               (THRASH_S, default 1800); per-fault figures in bench/results/soak.json

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

# Debian packages: FUSE and the headers pyfuse3 builds against; a compiler and Python
# headers for the C extensions; venv; openssl for TLS test certificates; nftables,
# iproute2 and e2fsprogs for the failure-injection and container-disk tests; chromium for
# the dashboard's browser test (Playwright drives Debian's build: `playwright install`
# downloads browsers from a CDN and is never run).
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv openssl \
                nftables iproute2 e2fsprogs util-linux chromium
# and for `make bench`: fio for the I/O workloads, MooseFS (1 master, 3 chunkservers, a mount:
# ../shared/peers/moosefs-up.sh) as the baseline
BENCH_APT_PACKAGES := fio moosefs-master moosefs-chunkserver moosefs-client moosefs-cli fuse3 \
                      e2fsprogs util-linux iproute2

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo bench bench-components soak install system-packages bench-packages clean

# Two pytest workers, one test file each at a time (a module's cluster stays in one worker):
# most tests wait on real timers and processes, so two run in about the time of one.
# JOBS=0 runs serially; ordinary pytest runs (no -n) are serial too.
JOBS ?= 2

test: install
	$(PY) -m ruff check vstore tests bench
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile

demo: install
	$(VENV)/bin/vstore demo

bench: install bench-packages $(BENCH_STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

bench-components: install
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

# $(call apt-install,PACKAGES): apt-get install those of PACKAGES that are not installed
define apt-install
@missing=""; for p in $(1); do \
  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
done; \
if [ -n "$$missing" ]; then \
  echo "installing Debian packages:$$missing"; \
  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
fi
endef

system-packages:
	$(call apt-install,$(APT_PACKAGES))

bench-packages:
	$(call apt-install,$(BENCH_APT_PACKAGES))

$(STAMP): pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $(BENCH_STAMP)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
