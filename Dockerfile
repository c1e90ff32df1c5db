# syntax=docker/dockerfile:1
# A small static image of invariant-agent (the manifests in manifests/ run it).
#
#   docker build -t invariant-agent:0.1.0 .
#
# Not built by the tests: docker cannot run on the machines this repository is developed
# and tested on, so this file is kept deliberately plain. Build it where docker (BuildKit)
# runs.
#
# Stage 1 builds a fully static binary for x86_64-unknown-linux-musl (musl-gcc compiles
# ring's C and assembly); stage 2 is distroless "static" (no shell, no libc), running as
# the "nonroot" user 65532 that the manifests' securityContext expects.

FROM rust:1.95-bookworm AS builder
RUN rustup target add x86_64-unknown-linux-musl \
    && apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin invariant-agent \
    && cp target/x86_64-unknown-linux-musl/release/invariant-agent /invariant-agent

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /invariant-agent /usr/local/bin/invariant-agent
USER 65532:65532
# 9464: /metrics, /healthz, /readyz (--metrics-listen); 9465: gRPC API (--grpc-listen).
EXPOSE 9464 9465
ENTRYPOINT ["/usr/local/bin/invariant-agent"]
CMD ["--help"]
