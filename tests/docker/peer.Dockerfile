# A peer for the tracepoint tests (tests/e2e/tracepoint.rs): a container with
# curl and python3, the processes whose connections the agent must name.
# Built by `scripts/image.sh - tcpwatch-peer:e2e peer`.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl python3 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
CMD ["sleep", "infinity"]
