#!/usr/bin/env bash
# Builds the container image from the unchanged Dockerfile with podman, then runs it the way a
# restricted pod would and checks it serves:
#
#   1. podman is usable (the `runc` runtime: crun fails on this machine's hybrid cgroups; the
#      sandbox refuses raising rlimits, so every build and run passes the current limits as
#      explicit --ulimit values);
#   2. builder stand-in for rust:1-bookworm (base images cannot be pulled here): a Debian
#      bookworm rootfs from debootstrap (the mirror configured for apt), with gcc and libc6-dev,
#      plus this machine's Rust toolchain (rustup home and the ~/.cargo/bin proxies) at
#      /usr/local/rustup and /usr/local/cargo, as in the rust image;
#   3. runtime stand-in for gcr.io/distroless/cc-debian12:nonroot, made from the same rootfs:
#      glibc, libgcc, libstdc++, libgomp, CA roots, tzdata, users root/nobody/nonroot
#      (uid/gid 65532), no shell, no package manager; checked for each of those;
#   4. `podman build` of the Dockerfile with both stand-ins as its RUST_IMAGE/RUNTIME_IMAGE build
#      arguments (--network host: cargo fetches crates); the image runs as nonroot with no shell;
#   5. run: an upstream container (the image's own `demo`: the simulated IsSettled plus a
#      sidecar whose state file yields a valid token) and the sidecar under test, which is the
#      image's default command on deploy/base/config.toml with that token mounted as the
#      Secret file, in one private network namespace, both as uid 65532 with a read-only root
#      filesystem, all capabilities dropped and no-new-privileges; shows /healthz, /readyz, a
#      proxied request and a refused one, then SIGTERM and exit status 0.
#
# Everything slow is cached under $ISSETTLED_CI_CACHE (default /var/cache/issettled-ci): the
# Debian rootfs, podman's own storage (the stand-ins) and the Dockerfile's cache mounts (cargo
# registry and target), so a warm run takes a few minutes and a source change recompiles only
# this crate. Every step prints its time. Skips with the reason when podman cannot be used; fails instead when CI=true.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=.ci/lib.sh
source .ci/lib.sh

CACHE=${ISSETTLED_CI_CACHE:-/var/cache/issettled-ci}
SUITE=bookworm
IMAGE=localhost/issettled-proxy:ci
# Packages of the Debian rootfs both stand-ins are made from.
DEBIAN_PACKAGES=gcc,libc6-dev,ca-certificates,tzdata,libstdc++6,libgomp1
# What the runtime stand-in takes from that rootfs (distroless/cc: libc6, libgcc-s1, libgomp1,
# libstdc++6; base: ca-certificates' bundle, tzdata).
RUNTIME_PACKAGES=(libc6 libgcc-s1 libstdc++6 libgomp1 tzdata)
# Bump to rebuild the stand-ins after changing how they are made.
RECIPE=1

started=$(date +%s)

# --- 1. podman ----------------------------------------------------------------------------
ci_need podman podman
ci_need runc runc
ci_need debootstrap debootstrap
ci_need nsenter util-linux
ci_need curl curl
(( EUID == 0 )) || ci_unavailable "needs root (debootstrap, podman's storage under $CACHE, nsenter)"
mkdir -p "$CACHE/containers" "$CACHE/tmp"
# Podman's storage lives in the cache; its run state in /run (gone at reboot, as it should be).
# TMPDIR is where buildah keeps the Dockerfile's cache mounts (buildah-cache-0/<id>).
export TMPDIR=$CACHE/tmp
podman=(podman --root "$CACHE/containers/storage" --runroot /run/issettled-ci-podman --runtime runc
        --cgroup-manager cgroupfs --events-backend file)
podman_info() {
    local out
    if ! out=$("${podman[@]}" info --format '{{.Store.GraphDriverName}} {{.Host.OCIRuntime.Name}} {{.Version.Version}}' 2>&1); then
        ci_unavailable "podman is not usable here: $(tail -1 <<<"$out")"
    fi
    ci_log "podman $out; cache $CACHE"
}
ci_step "podman info" podman_info

key() { sha256sum | cut -c1-12; }

# --- 2. the Debian rootfs and the builder stand-in --------------------------------------------
rootfs=$CACHE/$SUITE-rootfs
debian_rootfs() {
    if [[ -f "$rootfs/.complete" && "$(cat "$rootfs/.complete")" == "$DEBIAN_PACKAGES" ]]; then
        ci_log "Debian $SUITE rootfs: cached ($rootfs)"
        return
    fi
    local mirror
    mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
             | head -1 | tr -d ' ' || true)
    [[ -n "$mirror" ]] || ci_die "no Debian mirror in /etc/apt/sources.list*"
    ci_log "debootstrap $SUITE from $mirror (+ $DEBIAN_PACKAGES)"
    rm -rf "$rootfs" "$rootfs.new"
    # debootstrap mounts /proc inside while it works: unmount it if it dies half-way.
    if ! debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" "$SUITE" "$rootfs.new" "$mirror" \
            >"$CACHE/debootstrap.log" 2>&1; then
        umount "$rootfs.new/proc" 2>/dev/null || true
        tail -20 "$CACHE/debootstrap.log" >&2
        ci_die "debootstrap failed (log: $CACHE/debootstrap.log)"
    fi
    rm -rf "$rootfs.new/var/cache/apt/archives/"*.deb
    echo "$DEBIAN_PACKAGES" >"$rootfs.new/.complete"
    mv "$rootfs.new" "$rootfs"
}
ci_step "Debian rootfs" debian_rootfs

sysroot=$(rustc --print sysroot)
toolchain=$(basename "$sysroot")
# The stand-ins' keys: how they are made and what went into them (the rootfs's package versions,
# the toolchain).
# The builder trusts what this machine trusts: cargo fetches crates through this machine's
# network (--network host), which may reach the registry only through a TLS-inspecting proxy
# whose CA is in the host's bundle (as here). The runtime stand-in keeps Debian's bundle.
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
builder_key=$( { echo "$RECIPE"; cat "$rootfs/var/lib/dpkg/status" "$HOST_CA_BUNDLE"; rustc -Vv; cargo -V; } | key)
BUILDER=localhost/issettled-ci/builder:$builder_key
builder_image() {
    if "${podman[@]}" image exists "$BUILDER"; then
        ci_log "builder stand-in: cached ($BUILDER)"
        return
    fi
    local tree=$CACHE/tmp/builder-tree
    rm -rf "$tree"
    cp -a "$rootfs" "$tree"
    rm -f "$tree/.complete"
    cp "$HOST_CA_BUNDLE" "$tree/etc/ssl/certs/ca-certificates.crt"
    # The rust image's layout: RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo (the
    # Dockerfile's registry cache mount is /usr/local/cargo/registry). The toolchain's HTML
    # docs (~800 MB) stay behind.
    mkdir -p "$tree/usr/local/rustup/toolchains/$toolchain" "$tree/usr/local/cargo/bin"
    tar -C "$sysroot" --exclude=./share/doc -cf - . | tar -C "$tree/usr/local/rustup/toolchains/$toolchain" -xf -
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
        "$toolchain" >"$tree/usr/local/rustup/settings.toml"
    for tool in rustup cargo rustc rustdoc; do
        cp -a "$HOME/.cargo/bin/$tool" "$tree/usr/local/cargo/bin/"
    done
    tar --numeric-owner -C "$tree" -cf - . | "${podman[@]}" import \
        --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        --message "issettled-ci builder stand-in: Debian $SUITE, $toolchain" - "$BUILDER" >/dev/null
    rm -rf "$tree"
}
ci_step "builder stand-in" builder_image
# Explicit limits for every build and run: this shell's, or lower where runc may not set them
# (here RLIMIT_NPROC above 32768 is refused even when it is this shell's own limit).
choose_ulimits() {
    local nofile nproc n
    nofile=$(ulimit -Sn) nproc=$(ulimit -Su)
    [[ $nofile == unlimited ]] && nofile=1048576
    [[ $nproc == unlimited ]] && nproc=1048576
    for n in "$nproc" 32768 16384 4096; do
        (( n <= nproc )) || continue
        ulimits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$n:$n")
        if "${podman[@]}" run --rm --network none "${ulimits[@]}" "$BUILDER" true 2>/dev/null; then
            ci_log "limits: ${ulimits[*]} (this shell: nofile $nofile, nproc $nproc)"
            return 0
        fi
    done
    ci_unavailable "runc refuses every --ulimit tried (nofile $nofile, nproc $nproc down to 4096)"
}
check_builder() {
    choose_ulimits
    # shellcheck disable=SC2016 # expanded by the builder's shell
    "${podman[@]}" run --rm --network none "${ulimits[@]}" "$BUILDER" \
        sh -c 'echo "builder: $(cargo --version), $(rustc --version), $(cc --version | head -1), $(. /etc/os-release; echo "$PRETTY_NAME")"' >&2 \
        || ci_die "the builder stand-in does not run cargo, rustc and cc"
}
ci_step "limits, builder check" check_builder

# --- 3. the runtime stand-in ------------------------------------------------------------------
runtime_key=$( { echo "$RECIPE"; cat "$rootfs/var/lib/dpkg/status"; echo "${RUNTIME_PACKAGES[*]}"; } | key)
RUNTIME=localhost/issettled-ci/runtime:$runtime_key
runtime_image() {
    if "${podman[@]}" image exists "$RUNTIME"; then
        ci_log "runtime stand-in: cached ($RUNTIME)"
        return
    fi
    local tree=$CACHE/tmp/runtime-tree pkg list
    rm -rf "$tree"
    mkdir -p "$tree"
    # Merged /usr, as in the rootfs: /lib64/ld-linux-x86-64.so.2 must resolve.
    for link in bin sbin lib lib64; do cp -a "$rootfs/$link" "$tree/"; done
    mkdir -p "$tree/usr/bin" "$tree/usr/sbin" "$tree/usr/lib" "$tree/usr/lib64"
    # The packages' files, without executables, documentation or directories.
    list=$CACHE/tmp/runtime-files
    for pkg in "${RUNTIME_PACKAGES[@]}"; do
        local info=$rootfs/var/lib/dpkg/info
        cat "$info/$pkg:amd64.list" 2>/dev/null || cat "$info/$pkg.list"
    done | grep -vE '^/(usr/)?(s?bin|libexec)/|^/usr/share/(doc|lintian|man|locale|bug)/' \
         | while read -r path; do
               [[ -L "$rootfs$path" || ! -d "$rootfs$path" ]] && echo "${path#/}"
           done | sort -u >"$list"
    printf '%s\n' etc/ssl/certs/ca-certificates.crt etc/os-release usr/lib/os-release >>"$list"
    tar -C "$rootfs" --no-recursion -cf - -T "$list" | tar -C "$tree" --keep-directory-symlink -xf -
    rm -f "$list"
    # The users and groups of distroless (nonroot is 65532), the files glibc's NSS reads.
    cat >"$tree/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
    cat >"$tree/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
EOF
    printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n' \
        >"$tree/etc/nsswitch.conf"
    mkdir -p "$tree/root" "$tree/home/nonroot" "$tree/tmp" "$tree/var/tmp"
    chmod 0700 "$tree/root" "$tree/home/nonroot"
    chmod 1777 "$tree/tmp" "$tree/var/tmp"
    chown 65532:65532 "$tree/home/nonroot"
    # distroless's properties, checked on the tree before it becomes an image.
    local shells
    shells=$(find "$tree" \( -name sh -o -name bash -o -name dash -o -name busybox \) -print)
    [[ -z "$shells" ]] || ci_die "runtime stand-in has a shell: $shells"
    [[ -z "$(find "$tree" \( -name apt -o -name apt-get -o -name dpkg \) -type f -print)" ]] \
        || ci_die "runtime stand-in has a package manager"
    for need in usr/lib/x86_64-linux-gnu/libc.so.6 usr/lib/x86_64-linux-gnu/libgcc_s.so.1 \
                lib64/ld-linux-x86-64.so.2 etc/ssl/certs/ca-certificates.crt usr/share/zoneinfo/UTC; do
        [[ -e "$tree/$need" ]] || ci_die "runtime stand-in lacks /$need"
    done
    tar --numeric-owner -C "$tree" -cf - . | "${podman[@]}" import \
        --change 'USER 65532' \
        --change 'WORKDIR /home/nonroot' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --message "issettled-ci runtime stand-in for distroless/cc-debian12:nonroot ($SUITE)" - "$RUNTIME" >/dev/null
    rm -rf "$tree"
}
ci_step "runtime stand-in" runtime_image

# --- 4. the image ------------------------------------------------------------------------------
# Two hazards of a cached build, handled here (the Dockerfile stays as it is):
# - podman 4.3's layer cache reuses `COPY --from=builder` even when the builder stage produced a
#   new binary, so a cached final stage can carry an old one: no layer cache (--layers=false).
#   The cargo target in the cache mount keeps that cheap: an unchanged crate builds in seconds.
# - cargo judges freshness by mtimes: sources older than the cached target's last build of
#   other content (a merge or checkout made while that build ran) count as built. When the
#   sources differ from those of the last image built here, this crate's fingerprints are
#   removed from the cache mount, so cargo recompiles it (its dependencies stay compiled).
target_cache=$TMPDIR/buildah-cache/issettled-target   # buildah's directory for the cache mount id
sources=$(find Cargo.toml Cargo.lock README.md src config -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
build_image() {
    if [[ "$(cat "$CACHE/last-build-sources" 2>/dev/null)" != "$sources" ]]; then
        rm -rf "$target_cache"/release/.fingerprint/issettled-proxy-*
        ci_log "sources $sources differ from the last image's: this crate is recompiled"
    fi
    "${podman[@]}" build --pull=never --network host --layers=false "${ulimits[@]}" \
        --build-arg "RUST_IMAGE=$BUILDER" --build-arg "RUNTIME_IMAGE=$RUNTIME" \
        --file Dockerfile --tag "$IMAGE" . \
        && echo "$sources" >"$CACHE/last-build-sources"
    # What earlier runs left: images replaced by this build, stand-ins of other toolchains.
    "${podman[@]}" image prune -f >/dev/null
    "${podman[@]}" images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/issettled-ci/' \
        | grep -vxF -e "$BUILDER" -e "$RUNTIME" | xargs -r "${podman[@]}" rmi >/dev/null || true
}
ci_step "podman build (Dockerfile unchanged)" build_image || ci_die "podman build failed"
git diff --quiet HEAD -- Dockerfile 2>/dev/null || ci_log "note: the Dockerfile differs from HEAD"
check_image() {
    local user runtime_size
    user=$("${podman[@]}" image inspect --format '{{.Config.User}}' "$IMAGE")
    [[ "$user" == nonroot ]] || ci_die "image user is '$user', not nonroot"
    if "${podman[@]}" run --rm --network none "${ulimits[@]}" --entrypoint /bin/sh "$IMAGE" -c true >/dev/null 2>&1; then
        ci_die "the image has a shell"
    fi
    ci_log "user $user, no /bin/sh, $("${podman[@]}" run --rm --network none "${ulimits[@]}" "$IMAGE" --version)" \
        || ci_die "the image does not run --version"
    size=$("${podman[@]}" image inspect --format '{{.Size}}' "$IMAGE")
    runtime_size=$("${podman[@]}" image inspect --format '{{.Size}}' "$RUNTIME")
    ci_log "image $IMAGE: $size bytes ($(( size / 1024 / 1024 )) MiB; the runtime stand-in alone: $(( runtime_size / 1024 / 1024 )) MiB)"
}
ci_step "image checks" check_image

# --- 5. run it ----------------------------------------------------------------------------------
run_dir=$(mktemp -d "$CACHE/tmp/run.XXXXXX")
upstream=issettled-ci-upstream-$$
sidecar=issettled-ci-sidecar-$$
cleanup() {
    # One at a time: the sidecar shares the upstream's network namespace, which it must leave first.
    "${podman[@]}" rm -f -t 0 "$sidecar" >/dev/null 2>&1 || true
    "${podman[@]}" rm -f -t 0 "$upstream" >/dev/null 2>&1 || true
    rm -rf "$run_dir"
}
trap cleanup EXIT
mkdir -p "$run_dir/upstream" "$run_dir/secret"
chown 65532:65532 "$run_dir/upstream" "$run_dir/secret"
chmod 0700 "$run_dir/upstream" "$run_dir/secret"
restricted=(--user 65532:65532 --read-only --cap-drop ALL --security-opt no-new-privileges "${ulimits[@]}")

# In the namespace the two containers share: its own loopback, nothing else.
in_pod() { nsenter --target "$pid" --net -- "$@"; }
wait_http() { # URL: 200 within 30 s
    for _ in $(seq 1 60); do
        [[ "$(in_pod curl -s -o /dev/null -w '%{http_code}' "$1")" == 200 ]] && return 0
        sleep 0.5
    done
    return 1
}
show() { # METHOD URL: print status and body
    local out
    out=$(in_pod curl -s -X "$1" -w '\n%{http_code}' "$2")
    printf '  %s %s -> %s %s\n' "$1" "$2" "$(tail -1 <<<"$out")" "$(head -c 300 <<<"$(sed '$d' <<<"$out")")" >&2
    tail -1 <<<"$out"
}

run_upstream() {
    # The simulated IsSettled of `demo` on 127.0.0.1:8090; the demo's own sidecar moved to
    # 18080/18081 and told to keep a state file, from which the token for the test is read.
    "${podman[@]}" run -d --name "$upstream" --network none "${restricted[@]}" \
        -v "$run_dir/upstream:/var/lib/demo" \
        -e ISSETTLED_PROXY__LISTEN__ADDRESS=127.0.0.1:18080 \
        -e ISSETTLED_PROXY__LISTEN__ADMIN_ADDRESS=127.0.0.1:18081 \
        -e ISSETTLED_PROXY__TOKEN__STATE_FILE=/var/lib/demo/token.state \
        -e ISSETTLED_PROXY__LOG__FORMAT=json \
        "$IMAGE" demo >/dev/null
    pid=$("${podman[@]}" inspect --format '{{.State.Pid}}' "$upstream")
    wait_http http://127.0.0.1:18081/readyz || ci_die "the demo upstream did not get ready: $("${podman[@]}" logs "$upstream" 2>&1 | tail -5)"
    # A refresh writes the state file; its token is what an administrator would put in the Secret.
    [[ "$(in_pod curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:18081/refresh)" == 200 ]] \
        || ci_die "the demo's refresh failed"
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["token"])' "$run_dir/upstream/token.state" \
        >"$run_dir/secret/token"
    chown 65532:65532 "$run_dir/secret/token"
    chmod 0400 "$run_dir/secret/token"
}
ci_step "run: simulated upstream" run_upstream

run_sidecar() {
    # The image's default command on the in-cluster configuration, as deploy/base mounts it:
    # config read-only at /etc/issettled-proxy, the token Secret read-only at
    # /var/run/secrets/issettled, an emptyDir-like tmpfs for the state file. Only the upstream
    # (which every overlay sets the same way) and the timings of the simulated IsSettled (revokes
    # after 60 s) are set.
    "${podman[@]}" run -d --name "$sidecar" --network "container:$upstream" "${restricted[@]}" \
        -v "$PWD/deploy/base/config.toml:/etc/issettled-proxy/config.toml:ro" \
        -v "$run_dir/secret:/var/run/secrets/issettled:ro" \
        --tmpfs /var/lib/issettled-proxy:rw,size=1m,mode=0700,U \
        -e ISSETTLED_PROXY__UPSTREAM__BASE_URL=http://127.0.0.1:8090 \
        -e ISSETTLED_PROXY__UPSTREAM__MEMBER_ID=demoBank \
        -e ISSETTLED_PROXY__TOKEN__REFRESH_INTERVAL=20s \
        -e ISSETTLED_PROXY__TOKEN__REVOKE_AFTER=60s \
        -e ISSETTLED_PROXY__TOKEN__REFRESH_BEFORE_EXPIRY=10s \
        "$IMAGE" >/dev/null
    wait_http http://127.0.0.1:8081/readyz || ci_die "the sidecar did not get ready: $("${podman[@]}" logs "$sidecar" 2>&1 | tail -5)"
}
ci_step "run: sidecar (default command, deploy/base/config.toml)" run_sidecar

ci_log "the sidecar: $("${podman[@]}" inspect --format 'user {{.Config.User}}, read-only rootfs {{.HostConfig.ReadonlyRootfs}}, {{len .HostConfig.CapDrop}} capabilities dropped, {{len .HostConfig.CapAdd}} added' "$sidecar")"
ci_log "its process: $(grep -E '^(Uid|Gid|CapEff|NoNewPrivs)' "/proc/$("${podman[@]}" inspect --format '{{.State.Pid}}' "$sidecar")/status" | tr -s '\t\n' '  ')"
probe() {
    [[ $(show GET http://127.0.0.1:8081/healthz) == 200 ]] || ci_die "/healthz"
    [[ $(show GET http://127.0.0.1:8081/readyz) == 200 ]] || ci_die "/readyz"
    [[ $(show GET http://127.0.0.1:8080/digital-accounts/DA-1001) == 200 ]] || ci_die "the proxied GET"
    [[ $(show PUT http://127.0.0.1:8080/payments/1) == 405 ]] || ci_die "the policy refusal"
    [[ $(show GET http://127.0.0.1:8080/errors/404) == 404 ]] || ci_die "the upstream error"
    in_pod curl -s http://127.0.0.1:8081/metrics | grep -E '^issettled_proxy_(requests_total|token_ready|token_refresh_total\{result="(success|file)"\})' \
        | sed 's/^/  metrics: /' >&2
}
ci_step "probe" probe

stop() { # CONTAINER: SIGTERM, then its exit status must be 0
    "${podman[@]}" kill --signal TERM "$1" >/dev/null
    local status
    status=$("${podman[@]}" wait "$1")
    ci_log "$1: exit status $status after SIGTERM"
    [[ "$status" == 0 ]] || { "${podman[@]}" logs "$1" 2>&1 | tail -5 >&2; ci_die "$1 exited $status after SIGTERM"; }
}
ci_step "SIGTERM (sidecar)" stop "$sidecar"
ci_log "the sidecar's last log lines:"
"${podman[@]}" logs "$sidecar" 2>&1 | tail -3 | cut -c1-300 | sed 's/^/  /' >&2
ci_step "SIGTERM (upstream)" stop "$upstream"

ci_log "OK in $(( $(date +%s) - started )) s: image $IMAGE, $(( size / 1024 / 1024 )) MiB ($size bytes)"
