# syntax=docker/dockerfile:1
# dbjanitor container image: the Rust binary on distroless, non-root.
#
#   docker build -t registry.example.org/dbjanitor:0.1.0 .
#   docker run --rm --workdir /tmp registry.example.org/dbjanitor:0.1.0 demo
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts,
# which keep the cargo registry and target/ between builds.

ARG RUST_VERSION=1.95

# ---- build ------------------------------------------------------------------
# Same Debian release (bookworm, glibc 2.36) as the runtime image below.
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The whole context (.dockerignore keeps it to what the build reads).
COPY . .
# target/ lives in a cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin dbjanitor \
 && install -D -m 0755 target/release/dbjanitor /out/dbjanitor

# ---- runtime ----------------------------------------------------------------
# distroless/cc: glibc, libgcc, CA certificates and tzdata; no shell, no
# package manager. The :nonroot tag's default user is 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="dbjanitor" \
      org.opencontainers.image.description="Scheduled database janitor: YAML rules pairing detection and fix SQL, run under advisory locks" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /out/dbjanitor /usr/local/bin/dbjanitor
# The rule pack, root-owned and read-only for the runtime user. On Kubernetes
# the ConfigMap dbjanitor-rules is mounted over it (same layout).
COPY rules/ /etc/dbjanitor/rules/

# dbjanitor reads $DBJANITOR_CONFIG when --config is not given: mount the
# config file there (docs/deploy.md). Relative paths in it resolve from here.
ENV DBJANITOR_CONFIG=/etc/dbjanitor/dbjanitor.yaml
WORKDIR /etc/dbjanitor

# Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 65532:65532

# dbjanitor daemon --listen 0.0.0.0:9187 (/healthz, /metrics)
EXPOSE 9187

ENTRYPOINT ["dbjanitor"]
CMD ["--help"]
