# issettled-proxy container image.
#
#   docker build -t issettled-proxy:dev .
#   docker run --rm issettled-proxy:dev --version
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts below. There is no
# `# syntax=` line on purpose: the built-in Dockerfile frontend supports them, and a syntax line
# would make BuildKit pull a frontend image from Docker Hub, which an isolated build network
# cannot reach.
#
# Reproducible builds: Cargo.lock pins every crate (`--locked`); pin the two base images by
# digest for your registry, e.g.
#   docker build \
#     --build-arg RUST_IMAGE=rust:1.95-bookworm@sha256:<digest> \
#     --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:<digest> .
# Keep both on the same Debian release (glibc of the builder <= glibc of the runtime).
# The crate uses rustls with ring, so there is no OpenSSL anywhere: ring only needs a C
# compiler at build time (present in the rust image) and libc/libgcc at run time (present
# in distroless/cc).

# ---------------------------------------------------------------------------------------
# Stage 1, "builder": compile the release binary.
#
# Dependencies are cached with BuildKit cache mounts rather than a deps-only layer: the
# cargo registry and /app/target survive between builds, so a source change recompiles
# only this crate. A cache mount is not part of the image, so the binary is copied out
# of it to /out inside the same RUN.
# ---------------------------------------------------------------------------------------
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder

WORKDIR /app

# Strip debug info (the release profile keeps std's); symbol names stay for backtraces.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_TERM_COLOR=never

# The whole (filtered) build context: what is left out is listed in .dockerignore.
COPY . .

RUN --mount=type=cache,id=issettled-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=issettled-target,target=/app/target,sharing=locked \
    cargo build --release --locked --bin issettled-proxy \
 && install -D -m 0755 target/release/issettled-proxy /out/issettled-proxy \
 && /out/issettled-proxy --version

# ---------------------------------------------------------------------------------------
# Stage 2, runtime: distroless "cc" (glibc, libgcc, CA roots in /etc/ssl/certs, no shell,
# no package manager), its nonroot variant (uid/gid 65532).
#
# Only the binary is copied in. The configuration comes from a mounted file (in
# Kubernetes: a ConfigMap at /etc/issettled-proxy/), the token from a mounted Secret.
# There is no HEALTHCHECK: Kubernetes ignores it and probes the admin port instead
# (see deploy/); under plain Docker use `issettled-proxy wait` from the app side.
# ---------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

LABEL org.opencontainers.image.title="issettled-proxy" \
      org.opencontainers.image.description="Credential sidecar for the IsSettled API: injects and refreshes the Bearer token" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/issettled-proxy /usr/local/bin/issettled-proxy

# Named user of the distroless nonroot image (65532:65532). Kubernetes cannot check a
# named user against runAsNonRoot, so deploy/ also sets runAsUser: 65532.
USER nonroot

# Documentation only: both ports bind loopback by default (listen.address, listen.admin_address),
# so `docker run -p` reaches them only once the mounted config binds 0.0.0.0 (in Kubernetes the
# proxy port stays on loopback; only the admin port is bound for the kubelet's probes).
# 8080: the proxy port (apps send requests here).
# 8081: the admin port (/healthz, /readyz, /status, /metrics).
EXPOSE 8080 8081

ENTRYPOINT ["/usr/local/bin/issettled-proxy"]
CMD ["run", "--config", "/etc/issettled-proxy/config.toml"]
