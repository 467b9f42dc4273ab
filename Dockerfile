# syntax=docker/dockerfile:1
# The image-preheat agent image: `docker build -t REGISTRY/image-preheat:TAG .` at the repository root.
# Untested here (no Docker Hub access on the development machines); see deploy/README.md.
#
# Build stage: the Cargo workspace, release profile, only the `image-preheat` binary. TLS is rustls
# (no OpenSSL); protoc is needed at build time. BuildKit cache mounts keep the registry and target
# between builds; the binary is copied out of the cached target in the same step.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p image-preheat --bin image-preheat \
 && install -D -m 0755 target/release/image-preheat /out/image-preheat

# Runtime stage: Debian slim (same release as the build stage, so the same glibc) with CA
# certificates for registries, and /bin/sh for the chart's hosts.toml init container.
#
# The image runs as the unprivileged uid 65532 by default. The DaemonSet runs it as root (uid 0,
# every capability dropped, read-only root filesystem) because the container runtime sockets
# (/run/containerd/containerd.sock, /var/run/docker.sock) are root-owned with mode 0660, the store
# is a root-owned hostPath, and the init container writes under /etc/containerd/certs.d. With
# RUNTIME=none and no hosts.toml writer the agent needs no root.
FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o 65532 -g 65532 /var/lib/image-preheat /etc/preheater
COPY --from=build /out/image-preheat /usr/local/bin/image-preheat
USER 65532:65532
# HTTP API (health, readiness, metrics) and the swarm; the mirror listens on 127.0.0.1:5000.
EXPOSE 8080/tcp 4001/tcp
ENTRYPOINT ["/usr/local/bin/image-preheat"]
CMD ["agent"]
