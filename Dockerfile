# syntax=docker/dockerfile:1
# Realtime gateway image: a release build on the official Rust image, run as an unprivileged user
# on Debian slim (same Debian release as the builder, so the same glibc).
#
#   docker build -t realtime-gateway .
#   docker run --env-file .env -p 3000:3000 realtime-gateway
#
# Configuration comes from the environment (see .env.example); nothing secret is baked in.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# The whole workspace is needed to resolve Cargo.lock (the stand-in and benchmark crates are
# workspace members); only the gateway binary is built. .dockerignore keeps target/ and node_modules/ out.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin realtime-gateway \
 && install -D -m 0755 target/release/realtime-gateway /out/realtime-gateway

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# curl is for HEALTHCHECK only; TLS roots for Supabase are compiled into the binary (webpki-roots).
# Versions are not pinned: the image is rebuilt to pick up Debian security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=builder /out/realtime-gateway /usr/local/bin/realtime-gateway
# An empty working directory: the gateway reads ./.env if present, and there is none in the image.
WORKDIR /app
USER 10001:10001
ENV PORT=3000 \
    BIND_ADDRESS=0.0.0.0 \
    LOG_FORMAT=json \
    LOG_LEVEL=info
EXPOSE 3000
# SIGTERM starts the graceful shutdown: /readyz 503 for DRAIN_SECS, then clients closed with 1001
# "going away" spread over the rest, upstream channel left, exit within SHUTDOWN_GRACE_SECS
# (default 30; give the runtime more).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/bin/sh", "-c", "curl --fail --silent --show-error --max-time 2 -o /dev/null \"http://127.0.0.1:${PORT:-3000}/healthz\" || exit 1"]
ENTRYPOINT ["/usr/local/bin/realtime-gateway"]
