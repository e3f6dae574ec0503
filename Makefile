# semnet: `make run` starts a local platform, `make test` runs every test with the race
# detector against real servers (see .ci/with-servers).
GO ?= go

.PHONY: run test build vet fuzz-smoke bench

run:
	$(GO) run ./cmd/semnet up

test:
	./.ci/with-servers $(GO) test -race -count=1 ./...

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/semnet ./cmd/semnet

vet:
	gofmt -l . | (! grep .) && $(GO) vet ./...

# Each fuzz target for a few seconds: catches regressions on the committed corpora.
fuzz-smoke:
	$(GO) test -run='^$$' -fuzz=FuzzParseRequested -fuzztime=10s ./shared/addrplan/
	$(GO) test -run='^$$' -fuzz=FuzzRewrite -fuzztime=10s ./node/packet/

bench:
	./.ci/with-servers $(GO) test -run='^$$' -bench=. -benchmem ./shared/... ./root/... ./cluster/... ./node/...
