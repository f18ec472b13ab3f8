# Ferry's build, test, demo and benchmark entry points. Everything a target needs is
# installed or built by `make deps` (idempotent; results cached under .deps/ and the Go
# build cache), so a clean checkout works with nothing preinstalled.
SHELL := /bin/bash
GO ?= go
BIN := bin
DEPS := $(CURDIR)/.deps
export PATH := $(DEPS)/bin:$(HOME)/go/bin:$(PATH)

.PHONY: all build test test-unit test-e2e fuzz lint deps deps-apt deps-tools deps-consul deps-jaeger demo bench clean

all: build

build:
	$(GO) build -o $(BIN)/ferry ./cmd/ferry

# Debian packages used by the benchmark (HAProxy, nginx, wrk, h2load, openssl) and the demo (curl).
deps-apt:
	@need=""; for p in haproxy nginx wrk nghttp2-client curl valgrind openssl; do \
	  dpkg -s $$p >/dev/null 2>&1 || need="$$need $$p"; done; \
	if [ -n "$$need" ]; then \
	  echo "installing:$$need"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need) >/dev/null || exit 1; \
	fi

deps-tools:
	@staticcheck -version 2>/dev/null | grep -q "(0.8.2)" || $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2

# Consul v1.16.6 (the last MPL-2.0 release) built from its Go module through a wrapper module,
# as ../shared/REAL-COMPONENTS.md shows; tests start it as a real `consul agent -dev`.
CONSUL_VERSION := 1.16.6
deps-consul:
	@if [ -x $(DEPS)/bin/consul ] && $(DEPS)/bin/consul version 2>/dev/null | grep -q '^Consul v$(CONSUL_VERSION)$$'; then exit 0; fi; \
	set -euo pipefail; \
	echo "building consul v$(CONSUL_VERSION) into $(DEPS)/bin/consul"; \
	export GONOSUMDB=github.com/hashicorp/consul/envoyextensions,github.com/hashicorp/consul/troubleshoot; \
	export GOFLAGS="-mod=mod -buildvcs=false"; \
	rm -rf $(DEPS)/consul-build && mkdir -p $(DEPS)/consul-build $(DEPS)/bin && cd $(DEPS)/consul-build; \
	$(GO) mod init consulbuild; \
	dir() { $(GO) mod download -json "$$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'; }; \
	cp -r "$$(dir github.com/hashicorp/consul/troubleshoot@v0.3.1)" troubleshoot && chmod -R u+w troubleshoot; \
	cp -r "$$(dir github.com/hashicorp/consul/troubleshoot@v0.6.0)/ports" troubleshoot/ && chmod -R u+w troubleshoot; \
	rm -f troubleshoot/ports/*_test.go && sed -i '/^replace /d' troubleshoot/go.mod; \
	$(GO) mod edit -replace github.com/hashicorp/consul/troubleshoot=./troubleshoot; \
	$(GO) get github.com/hashicorp/consul@v$(CONSUL_VERSION); \
	$(GO) build -o ../bin/consul.tmp github.com/hashicorp/consul; \
	mv ../bin/consul.tmp ../bin/consul; \
	../bin/consul version | sed -n 1p

# Jaeger all-in-one v1.62.0 built from its Go module through a wrapper module, as
# ../shared/REAL-COMPONENTS.md shows; tracing tests start it as a real OTLP receiver.
# The version is stamped with -ldflags so `jaeger-all-in-one version` reports it.
JAEGER_VERSION := 1.62.0
deps-jaeger:
	@if [ -x $(DEPS)/bin/jaeger-all-in-one ] && $(DEPS)/bin/jaeger-all-in-one version 2>/dev/null | grep -q '"gitVersion":"v$(JAEGER_VERSION)"'; then exit 0; fi; \
	set -euo pipefail; \
	echo "building jaeger all-in-one v$(JAEGER_VERSION) into $(DEPS)/bin/jaeger-all-in-one"; \
	export GOFLAGS="-mod=mod -buildvcs=false"; \
	mkdir -p $(DEPS)/bin; \
	tmp=$$(mktemp -d $(DEPS)/jaeger-build.XXXXXX); trap 'rm -rf "$$tmp"' EXIT; cd "$$tmp"; \
	$(GO) mod init jaegerbuild; \
	$(GO) get github.com/jaegertracing/jaeger/cmd/all-in-one@v$(JAEGER_VERSION); \
	$(GO) build -ldflags "-X github.com/jaegertracing/jaeger/pkg/version.latestVersion=v$(JAEGER_VERSION)" \
	  -o jaeger-all-in-one github.com/jaegertracing/jaeger/cmd/all-in-one; \
	mv jaeger-all-in-one $(DEPS)/bin/jaeger-all-in-one; \
	$(DEPS)/bin/jaeger-all-in-one version 2>/dev/null

deps: deps-apt deps-tools deps-consul deps-jaeger

test: build deps-tools deps-consul deps-jaeger
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go') 2>/dev/null); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	staticcheck ./...
	$(GO) test -race -count=1 ./...
	$(MAKE) fuzz

# Each fuzz target runs briefly; a failure leaves its input under testdata/fuzz.
# The parsers and matchers Ferry exposes to untrusted input: config files, request framing
# and the HTTP/1.x request reader, upstream response heads, mesh-wide documents from Consul
# KV, paths and access rules. Budgets are counts of executions (about 5-10 s each here), not
# durations: a duration-based -fuzztime fails at random with "context deadline exceeded"
# on Go 1.26 (golang/go#75804, fixed in Go 1.27).
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=25000x ./sidecar/config/
	$(GO) test -run='^$$' -fuzz='^FuzzParseWithOverlay$$' -fuzztime=25000x ./sidecar/config/
	$(GO) test -run='^$$' -fuzz='^FuzzGuardScan$$' -fuzztime=50000x ./sidecar/l7/
	$(GO) test -run='^$$' -fuzz='^FuzzH1ServerRequest$$' -fuzztime=50000x ./sidecar/l7/
	$(GO) test -run='^$$' -fuzz='^FuzzParseRequestHead$$' -fuzztime=50000x ./sidecar/l7/
	$(GO) test -run='^$$' -fuzz='^FuzzParseResponseHead$$' -fuzztime=50000x ./sidecar/l7/
	$(GO) test -run='^$$' -fuzz='^FuzzParseRequestReusing$$' -fuzztime=30000x ./sidecar/l7/
	$(GO) test -run='^$$' -fuzz='^FuzzParseResponseRecycled$$' -fuzztime=30000x ./sidecar/l7/
	$(GO) test -run='^$$' -fuzz='^FuzzPath$$' -fuzztime=500000x ./policy/normalize/
	$(GO) test -run='^$$' -fuzz='^FuzzAccess$$' -fuzztime=30000x ./policy/

demo: build
	bash examples/static/demo.sh

# The Consul example: a real dev agent, two services with Ferry sidecars registered in it.
.PHONY: demo-consul
demo-consul: build deps-consul
	bash examples/consul/run.sh

bench: build deps
	bash bench/run.sh
	bash bench/instructions.sh
	$(GO) test -run '^$$' -bench BenchmarkConsulConvergence500 -benchtime 1x ./test/consul

clean:
	rm -rf $(BIN)
