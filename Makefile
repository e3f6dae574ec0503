# semnet: `make run` starts a local platform, `make test` runs every test with the race
# detector against real servers (see .ci/with-servers).
GO ?= go

# VERSION is what `semnet version` reports for binaries built here.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
RELEASE_ARCHS ?= amd64 arm64

.PHONY: run test build release vet fuzz-smoke bench

run:
	$(GO) run ./cmd/semnet up

test:
	./.ci/with-servers $(GO) test -race -count=1 ./...

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o bin/semnet ./cmd/semnet

# Static Linux binaries bin/semnet-VERSION-linux-ARCH and their SHA-256 sums.
release:
	@for arch in $(RELEASE_ARCHS); do \
		echo "bin/semnet-$(VERSION)-linux-$$arch"; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" \
			-o bin/semnet-$(VERSION)-linux-$$arch ./cmd/semnet || exit 1; \
	done
	cd bin && sha256sum $(foreach a,$(RELEASE_ARCHS),semnet-$(VERSION)-linux-$(a)) > semnet-$(VERSION).sha256

vet:
	gofmt -l . | (! grep .) && $(GO) vet ./...

# Each fuzz target for a fixed number of executions (10-30 s each here; the REST and MQTT
# targets drive real servers, so fewer executions): catches
# regressions on the committed corpora. A count, not a duration: Go 1.26's coordinator can
# fail a duration-bounded run with a spurious "context deadline exceeded" when a busy
# worker misses the deadline (go.dev/issue/75804, fixed in Go 1.27).
fuzz-smoke:
	$(GO) test -run='^$$' -fuzz=FuzzParseRequested -fuzztime=300000x ./shared/addrplan/
	$(GO) test -run='^$$' -fuzz='^FuzzRewrite$$' -fuzztime=300000x ./node/packet/
	$(GO) test -run='^$$' -fuzz='^FuzzEmbedded$$' -fuzztime=300000x ./node/packet/
	$(GO) test -run='^$$' -fuzz='^FuzzApply$$' -fuzztime=300000x ./node/table/
	$(GO) test -run='^$$' -fuzz='^FuzzApplyJSON$$' -fuzztime=300000x ./node/table/
	$(GO) test -run='^$$' -fuzz='^FuzzAPIBodies$$' -fuzztime=30000x ./root/
	$(GO) test -run='^$$' -fuzz='^FuzzRefBodies$$' -fuzztime=20000x ./cluster/refapi/
	$(GO) test -run='^$$' -fuzz='^FuzzHandle$$' -fuzztime=100000x ./cluster/nodes/
	$(GO) test -run='^$$' -fuzz='^FuzzRoute$$' -fuzztime=100000x ./node/clusterlink/

bench:
	./.ci/with-servers $(GO) test -run='^$$' -bench=. -benchmem ./shared/... ./root/... ./cluster/... ./node/...
