# Ferry's build, test, demo and benchmark entry points. Everything a target needs is
# installed or built by `make deps` (idempotent; results cached under .deps/ and the Go
# build cache), so a clean checkout works with nothing preinstalled.
SHELL := /bin/bash
GO ?= go
BIN := bin
DEPS := $(CURDIR)/.deps
export PATH := $(DEPS)/bin:$(HOME)/go/bin:$(PATH)

.PHONY: all build test test-unit test-e2e fuzz lint deps deps-apt deps-tools demo bench clean

all: build

build:
	$(GO) build -o $(BIN)/ferry ./cmd/ferry

# Debian packages used by the benchmark (HAProxy, nginx, wrk, h2load) and the demo (curl).
deps-apt:
	@need=""; for p in haproxy nginx wrk nghttp2-client curl; do \
	  dpkg -s $$p >/dev/null 2>&1 || need="$$need $$p"; done; \
	if [ -n "$$need" ]; then \
	  echo "installing:$$need"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need) >/dev/null || exit 1; \
	fi

deps-tools:
	@staticcheck -version 2>/dev/null | grep -q "(0.8.2)" || $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2

deps: deps-apt deps-tools

test: build deps-tools
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go') 2>/dev/null); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	staticcheck ./...
	$(GO) test -race -count=1 ./...
	$(MAKE) fuzz

# Each fuzz target runs briefly; a failure leaves its input under testdata/fuzz.
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=15s ./sidecar/config/

demo: build
	bash examples/static/demo.sh

bench: build deps
	bash bench/run.sh

clean:
	rm -rf $(BIN)
