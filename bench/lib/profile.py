#!/usr/bin/env python3
"""CPU profile of issettled-proxy under load, with perf (if installed).

Starts the harness's nginx origin on CPU 0 and the sidecar on CPU 1 (as in the harness's `--pin split`),
puts wrk -t1 -c64 on CPU 0 for --duration seconds (small GET by default), and records the sidecar with
`perf record` (no call graphs unless --callgraph: the release build has no frame pointers). Prints the
top symbols (`perf report --no-children --sort symbol`) and wrk's summary.

    profile.py --harness DIR --binary BIN --config TOML [--workload small_get|large_get|small_post]
               [--duration 10] [--log-level warn] [--out DIR] [--callgraph]
"""
import argparse
import re
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as benchlib  # noqa: E402
from memory import start_origin_and_proxy, stop, wait_ready, write_origin_files  # noqa: E402


def cpu_ticks(pid):
    """(user, system) CPU time of the whole process so far, in clock ticks."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--harness", required=True)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--workload", default="small_get", choices=["small_get", "large_get", "small_post"])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--log-level", default="warn")
    ap.add_argument("--out", default=None, help="keep perf.data and the report here")
    ap.add_argument("--callgraph", action="store_true", help="perf record --call-graph dwarf (large files)")
    ap.add_argument("--syscalls", action="store_true",
                    help="instead of a profile: count the sidecar's syscalls, context switches, wake-ups and CPU "
                         "time (task-clock, and user and system time from /proc, in us) per request (perf stat)")
    ap.add_argument("--origin-port", type=int, default=18280)
    ap.add_argument("--proxy-port", type=int, default=18290)
    ap.add_argument("--admin-port", type=int, default=18291)
    a = ap.parse_args(argv)
    perf = shutil.which("perf")
    if not perf:
        sys.exit("profile.py: perf is not installed (apt-get install linux-perf)")

    pb = benchlib.load_harness(a.harness)
    benchlib.add_refresh_route(pb, None)
    tmp = tempfile.mkdtemp(prefix="issettled-prof.")
    os.chmod(tmp, 0o755)
    out = a.out or tmp
    os.makedirs(out, exist_ok=True)
    token_file = write_origin_files(pb, tmp, a.origin_port)
    method, path, body = {
        "small_get": ("GET", pb.P_SMALL, None),
        "large_get": ("GET", pb.P_LARGE, None),
        "small_post": ("POST", pb.P_POST, pb.post_request_body()),
    }[a.workload]
    script = os.path.join(tmp, "wrk.lua")
    pb.wrk_script(script, method, body, {"Content-Type": "application/json"} if body else {})

    origin = proxy = None
    try:
        origin, proxy = start_origin_and_proxy(a, tmp, token_file, os.path.join(out, "proxy.log"),
                                               origin_cpu=0, proxy_cpu=1)
        wait_ready(a.proxy_port, proxy, 30)
        url = "http://127.0.0.1:%d%s" % (a.proxy_port, path)
        subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c64", "-d2s", "-s", script, url],
                       capture_output=True, timeout=60)
        data = os.path.join(out, "perf.data")
        rec = [perf, "record", "-q", "-F", "1999", "-p", str(proxy.pid), "-o", data]
        if a.syscalls:
            events = ["raw_syscalls:sys_enter", "syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_recvfrom",
                      "syscalls:sys_enter_read", "syscalls:sys_enter_write", "syscalls:sys_enter_writev",
                      "syscalls:sys_enter_sendto", "syscalls:sys_enter_futex", "context-switches",
                      "sched:sched_wakeup", "task-clock"]
            rec = [perf, "stat", "-x", ",", "-o", os.path.join(out, "perf-stat.csv"), "-p", str(proxy.pid),
                   "-e", ",".join(events)]
        if a.callgraph:
            rec += ["--call-graph", "dwarf,16384"]
        before = cpu_ticks(proxy.pid)
        p = subprocess.Popen(rec + ["--", "sleep", str(a.duration)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        time.sleep(0.3)
        w = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c64", "-d%ds" % (a.duration - 1),
                            "--latency", "-s", script, url], capture_output=True, text=True,
                           timeout=a.duration + 60)
        p.wait(timeout=a.duration + 60)
        after = cpu_ticks(proxy.pid)
        print("\n".join(ln for ln in w.stdout.splitlines() if not ln.startswith("BENCHJSON")))
        if a.syscalls:
            m = re.search(r"(\d+) requests in", w.stdout)
            reqs = int(m.group(1)) if m else 0
            print("per request (%d requests; counts cover %d s, load %d s):" % (reqs, a.duration, a.duration - 1))
            with open(os.path.join(out, "perf-stat.csv")) as f:
                for line in f:
                    parts = line.strip().split(",")
                    if len(parts) > 2 and parts[0].replace(".", "").isdigit() and reqs:
                        scale = 1000.0 if parts[1] == "msec" else 1.0  # task-clock: msec -> us
                        name = parts[2] + (" (us)" if parts[1] == "msec" else "")
                        print("  %-34s %8.2f" % (name, float(parts[0]) * scale / reqs))
            hz = os.sysconf("SC_CLK_TCK")
            for label, i in (("user time (us, /proc)", 0), ("system time (us, /proc)", 1)):
                if reqs:
                    print("  %-34s %8.2f" % (label, (after[i] - before[i]) * 1e6 / hz / reqs))
            return 0
        rep = subprocess.run([perf, "report", "-i", data, "--no-children", "--sort", "symbol",
                              "--stdio", "--percent-limit", "0.7"], capture_output=True, text=True, timeout=300)
        text = rep.stdout
        with open(os.path.join(out, "perf-report.txt"), "w") as f:
            f.write(text)
        print("\n".join(ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#"))[:12000])
        print("perf data and report: %s" % out)
    finally:
        stop(proxy)
        stop(origin)
        if a.out is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
