# mailfleet — `make test` is the one command that runs every check CI runs.
SHELL := /usr/bin/env bash
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
GO_TEST_FLAGS ?= -race -count=1 -timeout 20m

.PHONY: all build test test-deps tools envtest generate manifests generate-check vet fmt-check fuzz bench clean

all: build

build:
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/mailfleet ./cmd/mailfleet

## test: install what the tests need (hack/), check generated code is current,
## then vet and run every test with -race against a real API server.
test: test-deps envtest generate-check chart-check docs-check fmt-check vet
	KUBEBUILDER_ASSETS=$(CURDIR)/bin/k8s go test $(GO_TEST_FLAGS) ./...

test-deps:
	@hack/install-test-deps.sh
	@hack/install-helm.sh

tools:
	@hack/install-tools.sh

## envtest: kube-apiserver, etcd and kubectl built from the Go module proxy into bin/k8s.
envtest:
	@hack/build-envtest.sh >/dev/null

CONTROLLER_GEN = bin/controller-gen

## generate: deepcopy code for api/.
generate: tools
	$(CONTROLLER_GEN) object paths=./api/...

## manifests: CRDs and the operator's RBAC from the markers in api/ and controllers/.
manifests: tools
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:dir=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=mailfleet-operator paths=./controllers/... output:rbac:dir=config/rbac

## generate-check: fails when generated files are not what the markers say.
generate-check: generate manifests
	@if [ -n "$$(git status --porcelain -- api config)" ]; then \
	  echo "generated files are out of date; run 'make generate manifests' and commit:"; \
	  git status --porcelain -- api config; exit 1; fi

vet:
	go vet ./...
	go vet -tags e2e ./test/e2e

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v zz_generated)); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

## fuzz: run each fuzz target for FUZZTIME (the seeds also run in `make test`).
FUZZTIME ?= 30s
fuzz:
	go test -run='^$$' -fuzz=FuzzReadData -fuzztime=$(FUZZTIME) ./relay/smtpd
	go test -run='^$$' -fuzz=FuzzSASL -fuzztime=$(FUZZTIME) ./relay/smtpd
	go test -run='^$$' -fuzz=FuzzParsePath -fuzztime=$(FUZZTIME) ./relay/smtpd
	go test -run='^$$' -fuzz=FuzzParse -fuzztime=$(FUZZTIME) ./relay/credentials
	go test -run='^$$' -fuzz=FuzzStripHeader -fuzztime=$(FUZZTIME) ./relay/delivery
	go test -run='^$$' -fuzz=FuzzUnpack -fuzztime=$(FUZZTIME) ./relay/queue
	go test -run='^$$' -fuzz=FuzzDotWriter -fuzztime=$(FUZZTIME) ./relay/smtpclient

## bench: the relay's throughput benchmarks (figures in the README).
bench: test-deps
	go test -run='^$$' -bench=. -benchtime=3s ./relay/...

# The issue's full zero-loss run: 10,000 messages while the relay is
# SIGKILLed and restarted at random (CI runs TestZeroLoss with 2,000).
.PHONY: zero-loss
zero-loss:
	MAILFLEET_ZERO_LOSS_MESSAGES=10000 go test -count=1 -run TestZeroLoss -v -timeout 30m ./cmd/mailfleet

# The issue's webhook drill: 2,000 messages while the webhook receiver is
# down for 60 s (make test runs TestWebhookReceiverDown with 300 and 8 s).
.PHONY: webhook-drill
webhook-drill:
	MAILFLEET_WEBHOOK_DRILL_MESSAGES=2000 MAILFLEET_WEBHOOK_DRILL_DOWN_SECONDS=60 go test -count=1 -run TestWebhookReceiverDown -v -timeout 20m ./cmd/mailfleet

## shaping-drill: the destination shaping drill at the issue's size, 2,000
## messages from three relays to a host that takes two sessions (make test
## runs 300).
.PHONY: shaping-drill
shaping-drill:
	MAILFLEET_SHAPING_DRILL_MESSAGES=2000 go test -count=1 -run TestShapingDrill -v -timeout 10m ./relay/delivery

clean:
	rm -rf bin/

## bench-operator: the operator at scale (hack/bench/operatorscale): 10,000
## SmtpAccounts and 20,000 SmtpLabels against envtest (-labels-per-account 5
## for 50,000); time to all-Ready, peak RSS, propagation to a relay.
## BENCH_OPERATOR_FLAGS passes flags.
.PHONY: bench-operator
BENCH_OPERATOR_FLAGS ?=
bench-operator: envtest
	KUBEBUILDER_ASSETS=$(CURDIR)/bin/k8s go run ./hack/bench/operatorscale $(BENCH_OPERATOR_FLAGS)

## bench-peers: mailfleet beside Postfix, Haraka and smtp-sink on this
## machine (hack/bench/peers): accept rates, sustained delivery, idle
## sessions; writes docs/benchmarks/peers.md and its charts.
## BENCH_PEERS_FLAGS passes flags (go run ./hack/bench/peers -h).
.PHONY: bench-peers
BENCH_PEERS_FLAGS ?=
bench-peers:
	bash hack/install-bench-deps.sh
	go run ./hack/bench/peers $(BENCH_PEERS_FLAGS)

## chart-sync: copy the generated CRDs and RBAC rules into the Helm chart.
## config/ is the one source; the chart reads its copies under files/.
.PHONY: chart-sync chart-check docs docs-check image
CHART_DIR := charts/mailfleet
chart-sync: manifests
	rm -f $(CHART_DIR)/files/crds/*.yaml
	cp config/crd/bases/*.yaml $(CHART_DIR)/files/crds/
	cp config/rbac/role.yaml config/rbac/leader_election_role.yaml $(CHART_DIR)/files/rbac/

## chart-check: fails when the chart's copies differ from config/ (after
## regenerating it); the chart's own tests run in `go test ./test/install`.
chart-check: manifests
	@diff -r config/crd/bases $(CHART_DIR)/files/crds >/dev/null && \
	  diff config/rbac/role.yaml $(CHART_DIR)/files/rbac/role.yaml >/dev/null && \
	  diff config/rbac/leader_election_role.yaml $(CHART_DIR)/files/rbac/leader_election_role.yaml >/dev/null || \
	  { echo "the chart's CRDs or RBAC differ from config/; run 'make chart-sync' and commit"; exit 1; }

## docs: the CRD reference (docs/reference/crds.md) from the CRD schemas,
## and docs/openapi.json from the HTTP API's embedded document.
docs: manifests
	go run ./hack/crdref -crds config/crd/bases -out docs/reference/crds.md
	cp relay/httpapi/openapi.json docs/openapi.json

## docs-check: fails when docs/reference/crds.md is not what `make docs` writes.
docs-check: manifests
	@go run ./hack/crdref -crds config/crd/bases -out docs/reference/crds.md -check
	@cmp -s relay/httpapi/openapi.json docs/openapi.json || \
	  { echo "docs/openapi.json differs from relay/httpapi/openapi.json; run 'make docs' and commit"; exit 1; }

## image-docker: the same image with a Docker engine, from the Dockerfile.
IMAGE ?= ghcr.io/mailfleet/mailfleet:$(VERSION)
.PHONY: image-docker
image-docker:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

## test-e2e: the chart as real pods on the single-node cluster of
## hack/cluster (make cluster-up first; make cluster-down after): the images
## built and loaded, cert-manager's own controllers, then test/e2e
## (docs/testing.md). E2E_FLAGS passes flags to go test (e.g. -run).
E2E_FLAGS ?=
# A tag per content: a rebuilt image under a reused tag would not replace
# the pods' (IfNotPresent), so a dirty tree's tag carries a hash of its diff.
E2E_IMAGE_TAG ?= $(shell git describe --tags --always)-$(shell git diff HEAD | sha256sum | cut -c1-8)
.PHONY: test-e2e
test-e2e: test-deps envtest
	hack/cluster/cert-manager/build.sh
	VERSION=$(E2E_IMAGE_TAG) MAILFLEET_PLATFORMS=linux/$$(go env GOARCH) hack/image/images.sh build
	hack/image/images.sh load
	cd hack/cluster/cert-manager && KUBEBUILDER_ASSETS=$(CURDIR)/bin/k8s go test -count=1 ./...
	E2E_IMAGE_TAG=$(E2E_IMAGE_TAG) go test -tags e2e -count=1 -v -timeout 60m $(E2E_FLAGS) ./test/e2e
	$(MAKE) webhook-drill
	$(MAKE) shaping-drill

# Images without Docker (make image, images, images-load) and the
# single-node cluster (make cluster-up, cluster-down).
include hack/image/image.mk hack/cluster/cluster.mk
