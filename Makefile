# mailfleet — `make test` is the one command that runs every check CI runs.
SHELL := /usr/bin/env bash
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
GO_TEST_FLAGS ?= -race -count=1 -timeout 20m

.PHONY: all build test test-deps vet fmt-check fuzz bench clean

all: build

build:
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/mailfleet ./cmd/mailfleet

## test: install what the tests need (hack/), then vet and run every test with -race.
test: test-deps fmt-check vet
	go test $(GO_TEST_FLAGS) ./...

test-deps:
	@hack/install-test-deps.sh

vet:
	go vet ./...

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

## bench: the relay's throughput benchmarks (figures in the README).
bench: test-deps
	go test -run='^$$' -bench=. -benchtime=3s ./relay/...

clean:
	rm -rf bin/
