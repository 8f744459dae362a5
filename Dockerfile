# syntax=docker/dockerfile:1.7
#
# issettled-proxy container image.
#
#   docker build -t issettled-proxy:dev .
#   docker run --rm issettled-proxy:dev --version
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts below.
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
FROM rust:1-bookworm AS builder

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
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

LABEL org.opencontainers.image.title="issettled-proxy" \
      org.opencontainers.image.description="Credential sidecar for the IsSettled API: injects and refreshes the Bearer token" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/issettled-proxy /usr/local/bin/issettled-proxy

# Named user of the distroless nonroot image (65532:65532). Kubernetes cannot check a
# named user against runAsNonRoot, so deploy/ also sets runAsUser: 65532.
USER nonroot

# 8080: the proxy port (apps send requests here; keep it on loopback in a pod).
# 8081: the admin port (/healthz, /readyz, /status, /metrics).
EXPOSE 8080 8081

ENTRYPOINT ["/usr/local/bin/issettled-proxy"]
CMD ["run", "--config", "/etc/issettled-proxy/config.toml"]
