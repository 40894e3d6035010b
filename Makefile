# medseg: CT segmentation and 3D-model services. `make demo` sets everything up and runs
# the pipeline on a phantom case; `make test` runs the test suite.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROTO_FILES := $(shell find protos/medseg -name '*.proto' | sort)
# Vendored health + google.rpc protos: in the descriptor set, no Python stubs (the grpcio-health-checking
# and googleapis-common-protos packages ship those). Named relative to protos/third_party.
THIRD_PARTY_PROTOS := $(patsubst protos/third_party/%,%,$(shell find protos/third_party -name '*.proto' | sort))
GEN_DIR := python
DESCRIPTOR := gateway_envoy/medseg.pb


.PHONY: setup protos protos-check test test-fast test-integration demo up down status logs bench eval soak node models lint clean
STACK := $(BIN)/python gateway_envoy/stack.py
export PYTHONPATH := $(CURDIR)

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r nnunet_svc/requirements.txt -r smoothing_svc/requirements.txt \
	    -r postprocess_svc/requirements.txt -r case_svc/requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q -e "python[server,dicom]"
	$(MAKE) --no-print-directory protos

protos:
	$(BIN)/python -m grpc_tools.protoc -I protos \
	    --python_out=$(GEN_DIR) --grpc_python_out=$(GEN_DIR) --pyi_out=$(GEN_DIR) \
	    $(PROTO_FILES)
	$(BIN)/python -m grpc_tools.protoc -I protos -I protos/third_party --include_imports --include_source_info \
	    --descriptor_set_out=$(DESCRIPTOR) $(PROTO_FILES) $(THIRD_PARTY_PROTOS)
	find $(GEN_DIR)/medseg/*/ -type d -exec touch {}/__init__.py \;

# CI: regenerate and fail when the committed stubs differ.
protos-check: protos
	git diff --exit-code -- $(GEN_DIR)/medseg $(DESCRIPTOR) || \
	    (echo "generated code is stale: run 'make protos' and commit" >&2; exit 1)
	test -z "$$(git status --porcelain -- $(GEN_DIR)/medseg $(DESCRIPTOR))" || \
	    (git status --porcelain -- $(GEN_DIR)/medseg $(DESCRIPTOR); echo "untracked generated files" >&2; exit 1)

# Everything CI runs: stale-stub check, Dockerfile lint, the whole test suite.
test: setup
	$(MAKE) --no-print-directory protos-check
	$(MAKE) --no-print-directory lint
	CI=$${CI:-} $(BIN)/pytest -q

# Unit tests only (no servers, no gateway).
test-fast:
	$(BIN)/pytest -q -m "not integration and not slow"

# The real stack through Envoy (free ports, temporary data root).
test-integration:
	$(BIN)/pytest -q -m integration tests/integration

BUF := .tools/node_modules/.bin/buf

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0

# Kubernetes manifests (deploy/k8s): render both overlays (scripts/k8s.py, no kustomize needed)
# and validate them against the Kubernetes API schemas, strict (kubernetes-validate);
# tests/test_k8s.py does the same inside `make test`.
k8s-validate:
	$(BIN)/python scripts/k8s.py validate

# Container images with podman (scripts/images.py; not part of `make test`: minutes on 2 cores):
# a Debian minbase + python3 base made with debootstrap and `podman import`, a host wheelhouse,
# one image per server + the gateway. Needs Debian podman, buildah, debootstrap, runc (root).
images:
	$(BIN)/python scripts/images.py build

# The built images together (one pod, read-only roots): Measure + SegmentTumor through Envoy.
images-test:
	$(BIN)/python scripts/images.py test

# `podman kube play` of deploy/k8s (cpu overlay, 2 postprocess + 2 nnunet replicas), calls
# through Envoy, every replica seen serving, torn down after.
k8s-smoke:
	$(BIN)/python scripts/images.py smoke

# Development CA + gateway and client certificates for MEDSEG_GATEWAY_TLS=tls|mtls (run/certs;
# see scripts/dev_certs.py and the README for real ones).
certs:
	$(BIN)/python scripts/dev_certs.py run/certs

# Regenerate deploy/k8s's Envoy ConfigMap from gateway_envoy/envoy.yaml.in (after editing it).
k8s-envoy:
	$(BIN)/python scripts/k8s.py envoy

# Contract style (buf: STANDARD + comments) and Dockerfiles (hadolint).
lint: $(BUF)
	$(BUF) lint
	$(BIN)/hadolint --failure-threshold warning */Dockerfile nnunet_svc/Dockerfile.cuda deploy/podman/Containerfile.*

# Start Envoy + the three servers under supervisord; wait until all are healthy.
up:
	$(STACK) up

down:
	$(STACK) down

status:
	$(STACK) status

logs:
	$(STACK) logs

# Set up, start the stack, run a phantom case through the whole pipeline.
demo: setup
	$(MAKE) --no-print-directory viewer
	$(STACK) up
	$(BIN)/python scripts/demo.py

# Every benchmark (long: clinical sizes; BENCHES="bench/bench_mesh.py ..." picks some), then one
# table of every ratio they measured in this run, with the machine (bench/ratios.py).
BENCHES ?= $(wildcard bench/bench_*.py)
BENCH_RATIOS := run/bench-ratios.jsonl
bench:
	mkdir -p run && rm -f $(BENCH_RATIOS)
	for b in $(BENCHES); do echo "== $$b"; MEDSEG_BENCH_RATIOS=$(CURDIR)/$(BENCH_RATIOS) $(BIN)/python $$b || exit 1; done
	$(BIN)/python bench/ratios.py $(BENCH_RATIOS)

# Evaluation on held-out phantom seeds (>= 20000) through a temporary stack: the whole chain and
# each post-processing algorithm on true inputs, at 3 mm, 1.5 mm and 512x512x300; writes
# docs/evaluation.md and docs/evaluation.json. Long (hours on 2 CPU cores at all three
# resolutions); EVAL_ARGS="--seeds 2 --resolutions 3mm" is the small form tests/integration/test_eval.py runs.
EVAL_ARGS ?=
eval:
	$(BIN)/python scripts/eval.py $(EVAL_ARGS)

# Load/soak: 32 clients, mixed cheap calls through Envoy on a temporary stack (postprocess +
# smoothing) for SOAK_SECONDS (default 600); prints calls, failures by code, p50/p99 per
# operation and each server's RSS trend; fails on any error but RESOURCE_EXHAUSTED or on
# growing memory. SOAK_ARGS=--running uses the stack `make up` started instead.
SOAK_SECONDS ?= 600
SOAK_CLIENTS ?= 32
soak:
	$(BIN)/python scripts/soak.py --seconds $(SOAK_SECONDS) --clients $(SOAK_CLIENTS) $(SOAK_ARGS)

# The Node.js client (clients/node): pinned npm toolchain from package-lock.json, TypeScript
# stubs generated from protos/ with buf + protoc-gen-es. The integration test does the same.
node:
	cd clients/node && npm ci --no-audit --no-fund && npm run -s generate && npm run -s typecheck

# The browser viewer (viewer/): pinned npm toolchain from package-lock.json, TypeScript stubs
# generated from protos/ (buf + protoc-gen-es), tsc, then esbuild bundles everything into
# viewer/dist, which every stack serves at http://127.0.0.1:8080/viewer/. The browser test
# (tests/integration/test_viewer.py, part of `make test`) builds it the same way.
.PHONY: viewer
viewer:
	cd viewer && npm ci --no-audit --no-fund --loglevel=error && npm run -s build

# Retrain the demo nnU-Net models on phantom data (slow on CPU; results are committed).
models:
	$(BIN)/python scripts/train_demo_models.py

clean:
	-$(STACK) down
	rm -rf run
