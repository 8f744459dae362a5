#!/usr/bin/env bash
# issettled-proxy benchmark: one run, one machine, side by side with direct, nginx, haproxy and caddy.
# See bench/README.md.
#
#   bench/run.sh                 # build, install, the three harness runs, memory, report (about 9 minutes)
#   bench/run.sh --quick         # 3 s per measurement, memory to 1,000 connections only (smoke test, ~3 min)
#   bench/run.sh --skip-build    # use the existing target/release/issettled-proxy
#   bench/run.sh --only main,refresh,info,memory,floor   # a subset of the steps
#   bench/run.sh --report DIR    # print the report of an earlier run again
#
# Steps (all in one run, results under bench/results/<UTC stamp>/, report in report.md there):
#   main     the shared harness, every target: direct, nginx, haproxy, caddy, issettled (log.level = warn);
#            small GET (302 B), 64 KiB GET, 1 KiB POST at 64 connections, plus the 1-connection latency probe
#   info     direct, nginx, issettled with log.level = info (the product default: one JSON line per request)
#   refresh  direct, nginx, issettled with token.refresh_interval = 1s (the origin answers the refresh with 204)
#   memory   issettled RSS idle, after a burst, with 1,000 and 10,000 idle keep-alive connections
#   floor    direct, nginx and bench/floor/pump.c (a C byte pump that only inserts the header: not a proxy, the
#            cheapest thing that can stand in the proxy's place) on the three c=64 workloads: the kernel's share
#            per request, and the highest rate this harness lets any proxy reach
#
# Environment: ISSETTLED_BIN (use this binary, no build), BENCH_HARNESS (harness dir; default ../shared/bench
# beside the repo if present, else bench/harness, the vendored copy), BENCH_EXTRA (more harness arguments,
# e.g. "--repeat 3" or "--wait-idle 30").
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
PY=/usr/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"

ARGS="$*"
quick=0
build=1
only="main,info,refresh,memory,floor"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --skip-build) build=0 ;;
    --only) only="$2"; shift ;;
    --report) exec "$PY" "$BENCH/lib/report.py" "$2" ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
want() { case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# ---- the harness: the project's shared copy if this machine has it, else the vendored one
if [ -n "${BENCH_HARNESS:-}" ]; then
  HARNESS="$BENCH_HARNESS"
elif [ -f "$ROOT/../shared/bench/lib/proxybench.py" ]; then
  HARNESS="$(cd "$ROOT/../shared/bench" && pwd)"
else
  HARNESS="$BENCH/harness"
fi
echo "== harness: $HARNESS"

# ---- tools (idempotent: apt only when something is missing)
bash "$HARNESS/setup.sh"
for tool in nginx wrk taskset; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || { echo "run.sh: $tool missing after setup" >&2; exit 1; }
done

# ---- the binary
if [ -n "${ISSETTLED_BIN:-}" ]; then
  BIN="$ISSETTLED_BIN"
else
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/issettled-proxy"
  if [ "$build" = 1 ]; then
    echo "== cargo build --release"
    (cd "$ROOT" && cargo build --release)
  fi
fi
[ -x "$BIN" ] || { echo "run.sh: no binary at $BIN (build it, or set ISSETTLED_BIN)" >&2; exit 1; }
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
echo "== binary: $BIN ($("$BIN" --version 2>/dev/null || echo '?'), built $(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ))"

# 10,000 client sockets + 10,000 accepted ones: raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$BENCH/results/$STAMP"
mkdir -p "$OUT"
{
  echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc=$(nproc)"
  echo "cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "kernel=$(uname -r)"
  echo "mem_total=$(grep MemTotal /proc/meminfo | awk '{print $2" kB"}')"
  echo "binary=$BIN"
  echo "binary_version=$("$BIN" --version 2>/dev/null || echo '?')"
  echo "binary_built=$(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ)"
  echo "git_head=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo '+dirty')"
  echo "harness=$HARNESS"
  echo "command=${BENCH_EXTRA:+BENCH_EXTRA=\"$BENCH_EXTRA\" }bench/run.sh${ARGS:+ $ARGS}"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"

harness_opts=()
if [ "$quick" = 1 ]; then
  harness_opts+=(--duration 3 --latency-duration 2)
fi
# shellcheck disable=SC2206
[ -n "${BENCH_EXTRA:-}" ] && harness_opts+=(${BENCH_EXTRA})

# The sidecar command the harness runs (bash -c, in the foreground, its own process group).
sidecar_cmd() {  # $1 = log level, $2.. = more NAME=VALUE overrides
  local level="$1"; shift
  local extra=""
  for kv in "$@"; do extra+=" $kv"; done
  echo "exec env -u RUST_LOG ISSETTLED_PROXY__LISTEN__ADDRESS=127.0.0.1:{port}" \
       "ISSETTLED_PROXY__UPSTREAM__BASE_URL={upstream_url} ISSETTLED_PROXY__TOKEN__FILE={token_file}" \
       "ISSETTLED_PROXY__LOG__LEVEL=$level$extra $BIN run --config $BENCH/sidecar.toml"
}

rc=0
harness() {  # $1 = step name, rest: harness arguments
  local name="$1"; shift
  echo
  echo "== $name: $(date -u +%H:%M:%S)"
  if ! "$PY" "$BENCH/lib/bench.py" --harness "$HARNESS" --refresh-log "$OUT/$name-refresh.log" -- \
      --sidecar-name issettled --sidecar-port 18090 --out "$OUT/$name.json" --label "issettled-proxy $name" \
      "${harness_opts[@]}" "$@" 2>&1 | tee "$OUT/$name.log"; then
    rc=1
  fi
  # tee hides the harness's exit status; PIPESTATUS is gone by now, so look at the JSON instead
  "$PY" - "$OUT/$name.json" <<'EOF' || rc=1
import json, sys
d = json.load(open(sys.argv[1]))
bad = [r["error"] for r in d["results"] if "error" in r] + [t for t, p in d["preflight"].items() if not p["ok"]]
sys.exit(1 if bad else 0)
EOF
}

if want main; then
  harness main --sidecar "$(sidecar_cmd warn)"
fi
if want info; then
  harness info --targets direct,nginx,issettled --workloads small_get,large_get,small_post \
    --sidecar "$(sidecar_cmd info)"
fi
if want refresh; then
  harness refresh --targets direct,nginx,issettled --workloads small_get,large_get,small_post \
    --sidecar "$(sidecar_cmd warn ISSETTLED_PROXY__TOKEN__REFRESH_INTERVAL=1s)"
fi
if want floor; then
  PUMP="${CARGO_TARGET_DIR:-$ROOT/target}/bench-floor-pump"
  if command -v cc >/dev/null 2>&1 && cc -O2 -Wall -o "$PUMP" "$BENCH/floor/pump.c"; then
    harness floor --targets direct,nginx,floor --workloads small_get,large_get,small_post --latency-duration 0 \
      --sidecar-name floor --sidecar "exec $PUMP {port} {upstream_url} {token_file}"
  else
    echo "== floor: no C compiler (cc), or bench/floor/pump.c did not build: step skipped" >&2
    rc=1
  fi
fi
if want memory; then
  echo
  echo "== memory: $(date -u +%H:%M:%S)"
  conns="1000,10000"
  [ "$quick" = 1 ] && conns="1000"
  "$PY" "$BENCH/lib/memory.py" --harness "$HARNESS" --binary "$BIN" --config "$BENCH/sidecar.toml" \
    --out "$OUT/memory.json" --conns "$conns" 2>&1 | tee "$OUT/memory.log" || rc=1
  [ -s "$OUT/memory.json" ] || rc=1
fi

echo
"$PY" "$BENCH/lib/report.py" "$OUT" | tee "$OUT/report.md"
ln -sfn "$STAMP" "$BENCH/results/latest"
echo
echo "results: $OUT (report.md; bench/results/latest points there)"
exit "$rc"
