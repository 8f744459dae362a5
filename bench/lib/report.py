#!/usr/bin/env python3
"""Markdown report of one bench/run.sh run: the tables, the ratios and the issue's targets.

    report.py RESULTS_DIR      (holds machine.txt, main.json, info.json, refresh.json, memory.json, floor.json)
"""
import json
import os
import sys

SIDECAR = "issettled"
FLOOR = "floor"
WL_TITLES = {
    "small_get": "small GET (302 B JSON), c=64",
    "large_get": "64 KiB GET, c=64",
    "small_post": "1 KiB POST -> 133 B, c=64",
    "latency_c1": "small GET, 1 connection (unloaded latency; proxy moved onto the load CPU)",
}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def i(x):
    return "-" if x is None else "{:,}".format(int(round(x)))


def f2(x):
    return "-" if x is None else "%.2f" % x


def f1(x):
    return "-" if x is None else "%.1f" % x


def signed(x):
    return "-" if x is None else "%+d" % int(round(x))


def table(doc, workloads=None):
    out = []
    for w, rows in doc["summary"].items():
        if workloads and w not in workloads:
            continue
        out.append("")
        out.append("**%s**" % WL_TITLES.get(w, w))
        out.append("")
        out.append("| target | req/s | x direct | x nginx | p50 µs | p99 µs | p99 added µs | non-2xx | sock err "
                   "| 401 at origin | proxy CPU % | CPU µs/req | new upstream conns |")
        out.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for t, r in rows.items():
            name = "**%s**" % t if t == SIDECAR else t
            out.append("| %s | %s | %s | %s | %s | %s | %s | %d | %d | %d | %s | %s | %s |" % (
                name, i(r["rps"]), f2(r["ratio_to_direct"]), f2(r["ratio_to_nginx"]), i(r["p50_us"]),
                i(r["p99_us"]), signed(r["p99_overhead_us"]), r["non2xx"], r["socket_errors"],
                r.get("upstream_unauthorized", 0), i(r["proxy_cpu_util_pct"]), f1(r["proxy_cpu_us_per_req"]),
                i(r["upstream_new_conns"])))
    return out


def refresh_log_stats(path):
    try:
        with open(path) as f:
            lines = [ln.split() for ln in f if ln.strip()]
    except OSError:
        return None
    times = [float(p[0]) for p in lines if p]
    statuses = {}
    for p in lines:
        st = p[-1].replace("status=", "")
        statuses[st] = statuses.get(st, 0) + 1
    span = (max(times) - min(times)) if len(times) > 1 else 0.0
    return {"calls": len(lines), "statuses": statuses, "span_s": span,
            "per_s": (len(lines) - 1) / span if span > 0 else None}


def errors_of(doc, target):
    if not doc:
        return None
    tot = {"non2xx": 0, "sockerr": 0, "unauth": 0, "requests": 0}
    for r in doc["results"]:
        if r.get("target") != target or "rps" not in r:
            continue
        tot["non2xx"] += r["non2xx"]
        tot["sockerr"] += sum(r["socket_errors"].values())
        tot["unauth"] += r.get("upstream_unauthorized", 0)
        tot["requests"] += r["requests"]
    return tot


def floor_section(floor_doc, main_doc):
    """The byte pump in the proxy's place: the harness's ceiling and the kernel's share per request."""
    out = ["", "## Floor: bench/floor/pump.c in the proxy's place (inserts the header, nothing else)", "",
           "Not a proxy: one C epoll loop, one upstream connection per client, the header inserted after the "
           "first line of each read, no parsing. Its CPU per request is about what the kernel costs any proxy "
           "here (the same 4 syscalls per request); its req/s is the most this harness lets a proxy reach, "
           "because wrk and the origin share the load CPU. For 64 KiB GET it is a rough floor: it moves the body in "
           "socket-sized reads and writes, and nginx has come in below it in some runs."]
    out += table(floor_doc)
    out += ["", "| workload | floor x nginx (this step) | floor proxy CPU % | floor CPU µs/req | issettled CPU µs/req "
            "(main step) | issettled above the floor, µs/req | nginx above the floor, µs/req (this step) |",
            "|---|--:|--:|--:|--:|--:|--:|"]
    for w, rows in floor_doc["summary"].items():
        fl, ng = rows.get(FLOOR), rows.get("nginx")
        mine = (main_doc or {}).get("summary", {}).get(w, {}).get(SIDECAR)
        if not fl:
            continue
        fcpu = fl["proxy_cpu_us_per_req"]
        icpu = mine["proxy_cpu_us_per_req"] if mine else None
        ncpu = ng["proxy_cpu_us_per_req"] if ng else None
        out.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            w, f2(fl["ratio_to_nginx"]), i(fl["proxy_cpu_util_pct"]), f1(fcpu), f1(icpu),
            "-" if icpu is None or fcpu is None else "%+.1f" % (icpu - fcpu),
            "-" if ncpu is None or fcpu is None else "%+.1f" % (ncpu - fcpu)))
    return out


def main(argv):
    d = argv[0]
    main_doc = load(os.path.join(d, "main.json"))
    info_doc = load(os.path.join(d, "info.json"))
    refresh_doc = load(os.path.join(d, "refresh.json"))
    mem = load(os.path.join(d, "memory.json"))
    floor_doc = load(os.path.join(d, "floor.json"))
    machine = {}
    try:
        with open(os.path.join(d, "machine.txt")) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("=")
                machine[k] = v
    except OSError:
        pass

    out = ["# issettled-proxy benchmark, %s" % machine.get("date_utc", "?"), ""]
    out.append("Machine: %s vCPU (`nproc`), %s, kernel %s, %s RAM. Binary %s, built %s (repo at git %s when "
               "the run started). Harness: %s."
               % (machine.get("nproc", "?"), machine.get("cpu_model", "?"), machine.get("kernel", "?"),
                  machine.get("mem_total", "?"), machine.get("binary_version", "?"),
                  machine.get("binary_built", "?"), machine.get("git_head", "?"), machine.get("harness", "?")))
    out.append("Command: `%s`." % machine.get("command", "bench/run.sh").strip())
    if main_doc:
        c = main_doc["config"]
        out.append("Harness settings: pin %s (wrk + origin on CPU %s, each proxy on CPU %s, 1 worker/thread each), "
                   "wrk -t1, %d s per measurement after %d s warm-up, repeat %d. Versions: %s."
                   % (c["pin"], c["load_cpus"], c["proxy_cpus"], c["duration_s"], c["warmup_s"], c["repeat"],
                      ", ".join("%s" % v for v in main_doc["versions"].values())))

    targets = []  # (name, ok, detail)
    if main_doc:
        out += ["", "## Throughput and latency (all targets; issettled at log.level = warn)"]
        out += table(main_doc)
        s = main_doc["summary"]
        for w, need in (("small_get", 1.2), ("small_post", 1.2), ("large_get", 1.0)):
            r = s.get(w, {}).get(SIDECAR)
            if r:
                ok = r["ratio_to_nginx"] is not None and r["ratio_to_nginx"] >= need
                targets.append(("throughput %s >= %.1fx nginx" % (w, need), ok,
                                "%.2fx (%s vs %s req/s)" % (r["ratio_to_nginx"] or 0, i(r["rps"]),
                                                           i(s[w]["nginx"]["rps"]))))
        for w in ("small_get", "large_get", "small_post", "latency_c1"):
            r = s.get(w, {}).get(SIDECAR)
            n = s.get(w, {}).get("nginx")
            if r and n:
                ok = r["p99_overhead_us"] <= n["p99_overhead_us"]
                targets.append(("p99 added over direct <= nginx's, %s" % w, ok,
                                "%s µs vs nginx %s µs" % (signed(r["p99_overhead_us"]), signed(n["p99_overhead_us"]))))

    if info_doc:
        out += ["", "## log.level = info (the product default: one JSON log line per request)"]
        out += table(info_doc)
        if main_doc:
            out += ["", "Cost of info-level logging (same workload; ratios and CPU/request are within-run, the "
                    "runs are minutes apart):", "",
                    "| workload | x nginx, warn | x nginx, info | CPU µs/req, warn | CPU µs/req, info | added µs/req |",
                    "|---|--:|--:|--:|--:|--:|"]
            for w, rows in info_doc["summary"].items():
                rw = main_doc["summary"].get(w, {}).get(SIDECAR)
                ri = rows.get(SIDECAR)
                if rw and ri:
                    add = (ri["proxy_cpu_us_per_req"] or 0) - (rw["proxy_cpu_us_per_req"] or 0)
                    out.append("| %s | %s | %s | %s | %s | %+.1f |" % (
                        w, f2(rw["ratio_to_nginx"]), f2(ri["ratio_to_nginx"]), f1(rw["proxy_cpu_us_per_req"]),
                        f1(ri["proxy_cpu_us_per_req"]), add))

    if refresh_doc:
        out += ["", "## token.refresh_interval = 1s (the origin answers POST /oauth-token/refresh with 204)"]
        out += table(refresh_doc)
        st = refresh_log_stats(os.path.join(d, "refresh-refresh.log"))
        if st:
            out += ["", "Refresh calls the origin answered during this run: %d over %.0f s (%.2f/s), statuses %s."
                    % (st["calls"], st["span_s"], st["per_s"] or 0, st["statuses"])]
        m = refresh_log_stats(os.path.join(d, "main-refresh.log"))
        if m:
            out.append("(Main run, 10m interval: %d refresh call(s), statuses %s.)" % (m["calls"], m["statuses"]))

    if floor_doc:
        out += floor_section(floor_doc, main_doc)

    if mem:
        out += ["", "## Memory (issettled-proxy, log.level = %s, unpinned: 2 runtime workers)" % mem.get("log_level"),
                "", "| state | VmRSS MiB | anon MiB | file MiB | VmHWM MiB | threads | fds |",
                "|---|--:|--:|--:|--:|--:|--:|"]
        for row in mem["steps"]:
            out.append("| %s | %.1f | %.1f | %.1f | %.1f | %s | %s |" % (
                row["name"], row["vmrss_kib"] / 1024, (row.get("rss_anon_kib") or 0) / 1024,
                (row.get("rss_file_kib") or 0) / 1024, row["vmhwm_kib"] / 1024, row["threads"], row["fds"]))
        reuse = mem.get("reuse_after_idle")
        if reuse:
            out.append("")
            out.append("After %.0f s idle (past the 10 s header_read_timeout), %d of the %d oldest connections "
                       "answered a second request with 200; non-200 answers while opening: %s."
                       % (reuse["idle_s"], reuse["answered_200"], reuse["sampled"], mem.get("non200")))
        steps = {r["name"]: r for r in mem["steps"]}
        idle = steps.get("idle")
        if idle:
            targets.append(("RSS idle <= 20 MiB", idle["vmrss_kib"] <= 20 * 1024, "%.1f MiB" % (idle["vmrss_kib"] / 1024)))
        ten = steps.get("10000 idle keep-alive conns")
        if ten:
            targets.append(("RSS with 10,000 idle connections <= 64 MiB", ten["vmrss_kib"] <= 64 * 1024,
                            "%.1f MiB" % (ten["vmrss_kib"] / 1024)))

    errs = []
    for name, doc in (("main", main_doc), ("info", info_doc), ("refresh", refresh_doc)):
        e = errors_of(doc, SIDECAR)
        if e:
            errs.append((name, e))
    if errs:
        ok = all(e["non2xx"] == 0 and e["sockerr"] == 0 and e["unauth"] == 0 for _, e in errs)
        targets.append(("zero non-2xx in every run (incl. refresh every second)", ok,
                        "; ".join("%s: %d non-2xx, %d socket errors, %d 401s at the origin, of %s requests"
                                  % (n, e["non2xx"], e["sockerr"], e["unauth"], i(e["requests"])) for n, e in errs)))
    for name, doc in (("main", main_doc), ("info", info_doc), ("refresh", refresh_doc), ("floor", floor_doc)):
        if doc:
            bad = {t: p["issues"] for t, p in doc["preflight"].items() if not p["ok"]}
            if bad:
                out.append("")
                out.append("PREFLIGHT FAILURES (%s): %s" % (name, json.dumps(bad)))
            errors = [r["error"] for r in doc["results"] if "error" in r]
            if errors:
                out.append("ERRORS (%s): %s" % (name, errors))
            busy = sorted({"%s/%s" % (r["workload"], r["target"]) for r in doc["results"]
                           if (r.get("other_cpu_pct") or 0) > 5})
            if busy:
                out.append("")
                out.append("Note (%s): other processes used >5%% of the machine during %s." % (name, ", ".join(busy)))

    out += ["", "## Targets (issue 4)", "", "| target | met | measured |", "|---|---|---|"]
    for name, ok, detail in targets:
        out.append("| %s | %s | %s |" % (name, "yes" if ok else "**no**", detail))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
