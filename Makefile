# Cairn: every target installs what it needs, so each works on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest
export LVM_SUPPRESS_FD_WARNINGS := 1

.PHONY: help demo demo-down test unit e2e sanity conformance bench bench-scale lint fmt crds tools images tools-and-images proto venv system-deps clean

help:
	@echo "make demo    the cluster-in-a-box, left running (make demo-down removes it)"
	@echo "make test    everything CI runs: setup, lint, unit tests and the e2e suite"
	@echo "make sanity  csi-sanity (mount and block) against the driver on the test bed"
	@echo "make e2e     the e2e suite only"
	@echo "make conformance  Kubernetes' external storage e2e suite against Cairn on kubelet nodes"
	@echo "make bench   benchmarks;  make crds  regenerate deploy/crds;  make lint  ruff, import contracts, mypy"
	@echo "make images  the container images (cairn, test-bed sidecars, e2e lookalikes) in .cache/images"

demo: system-deps proto
	@echo "make demo: the first run builds the Kubernetes parts, containerd, MinIO and helm from source, and"
	@echo "the images from the Dockerfile (about 36 minutes on 2 cores from nothing, progress below); later runs reuse them."
	@$(MAKE) --no-print-directory tools-and-images
	$(PY) tools/demo.py up

demo-down: venv
	$(PY) tools/demo.py down

system-deps:
	@$(SHELL) tools/install_system_deps.sh

# The stubs must exist before the package is installed (csi/proto is one of its packages), and
# generating them needs grpcio-tools, so that goes in first.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet grpcio-tools==1.85.1
	$(PY) tools/gen_csi_stubs.py
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

proto: venv
	$(PY) tools/gen_csi_stubs.py

tools:
	$(PYTHON) tools/build_tools.py

# Needs root (mmdebstrap, buildah). A cold build takes several minutes; a warm one about a second.
images: system-deps tools
	$(PYTHON) tools/build_images.py

# What test, e2e and conformance need, cold in as little time as possible: the cairn image needs
# no Go tool, so it builds (mostly downloads and copies) while the tools compile (mostly CPU); the
# other images need the tools' binaries and come after.
tools-and-images: system-deps
	@set -o pipefail; \
	($(PYTHON) tools/build_images.py cairn 2>&1 | sed -u 's/^/[cairn image] /') & image=$$!; \
	$(PYTHON) tools/build_tools.py; tools=$$?; wait $$image; built=$$?; \
	test $$tools -eq 0 -a $$built -eq 0
	$(PYTHON) tools/build_images.py

crds: venv
	$(PY) -m cairn.api.crd --out deploy/crds

# ruff, then the import contracts and the type checker (tools/lint.py; README, "Layout").
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tools/lint.py

fmt: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

unit: proto
	$(PYTEST) tests -m "not root and not e2e"

e2e: system-deps proto tools-and-images
	$(PYTEST) tests/e2e

sanity: system-deps proto tools
	$(PYTEST) tests/e2e/test_csi_sanity.py -s -q

# Builds e2e.test, runs the External Storage specs on kubelet nodes; reports in .cache/conformance.
conformance: system-deps proto tools-and-images
	$(PY) tools/conformance.py

BENCHMARKS ?= publish_scaling create_latency hash_choice tier_upload checkpoint_stall commit_to_record checkpoint_restore data_path p2p_loopback swarm_tls p2p_seed swarm_scale prefetch memory_stall drain_lag
bench: system-deps proto tools
	@for b in $(BENCHMARKS); do echo "== bench/$$b.py"; $(PY) -m bench.$$b || exit 1; done

# The controller at 10 and 1,000 kwok nodes with simulated agents (issue 19); over 15 minutes with
# its default 10-minute windows, so not in BENCHMARKS. WINDOW_S=60 for a quick look.
bench-scale: system-deps proto tools
	$(PY) -m bench.scale_controller $(if $(WINDOW_S),--window-s $(WINDOW_S))

test: system-deps proto tools-and-images lint
	$(PYTEST) tests

clean:
	rm -rf $(VENV) csi/proto build dist *.egg-info
