# tcpwatch — build, run and test. `make test` and `make run` set themselves up
# on a fresh Debian/Ubuntu host when run as root (see scripts/install-deps.sh).

CARGO ?= cargo
BIN := target/release/tcpwatch
RUN_ARGS ?=

.PHONY: all build deps run test lint unit fuzz bench soak image clean

all: build

build:
	$(CARGO) build --release --locked

deps:
	scripts/install-deps.sh

run: deps build
	$(BIN) run $(RUN_ARGS)

# Unit, integration and end-to-end tests (the end-to-end ones need root:
# they build network namespaces and run the release binary in them).
test: deps lint
	$(CARGO) test --release --locked -- --test-threads=2

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

bench: deps
	scripts/bench.sh

# Soak: SOAK_SECONDS at SOAK_RATE new connections/s from namespace hosts, the
# SOAK_SOURCE source (xdp or pcap) blocking a scanner every 30 s; checks
# accounting, RSS and fds (scripts/soak.sh; results in BENCHMARKS.md).
SOAK_SECONDS ?= 600
SOAK_RATE ?= 1000
SOAK_SOURCE ?= xdp
soak: deps build
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_RATE=$(SOAK_RATE) SOAK_SOURCE=$(SOAK_SOURCE) scripts/soak.sh

# The container image (deploy/Dockerfile); creates debian:bookworm-slim and
# starts dockerd when this host has neither.
image: deps build
	scripts/image.sh $(BIN)

clean:
	$(CARGO) clean
