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
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from memory import load_arguments, prepare_load, start_pinned, stop  # noqa: E402


def cpu_ticks(pid):
    """(user, system) CPU time of the whole process so far, in clock ticks."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def main(argv):
    ap = argparse.ArgumentParser()
    load_arguments(ap, 18280)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--out", default=None, help="keep perf.data and the report here")
    ap.add_argument("--callgraph", action="store_true", help="perf record --call-graph dwarf (large files)")
    ap.add_argument("--syscalls", action="store_true",
                    help="instead of a profile: count the sidecar's syscalls, context switches, wake-ups and CPU "
                         "time (task-clock, and user and system time from /proc, in us) per request (perf stat)")
    a = ap.parse_args(argv)
    perf = shutil.which("perf")
    if not perf:
        sys.exit("profile.py: perf is not installed (apt-get install linux-perf)")

    tmp, out, token_file, path, script = prepare_load(a, "issettled-prof.")

    origin = proxy = None
    try:
        origin, proxy, url = start_pinned(a, tmp, token_file, out, path, 30)
        subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c64", "-d2s", "-s", script, url],
                       capture_output=True, timeout=60)
        data = os.path.join(out, "perf.data")
        rec = [perf, "record", "-q", "-F", "1999", "-p", str(proxy.pid), "-o", data]
        if a.syscalls:
            events = ["raw_syscalls:sys_enter", "syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_recvfrom",
                      "syscalls:sys_enter_read", "syscalls:sys_enter_write", "syscalls:sys_enter_writev",
                      "syscalls:sys_enter_sendto", "syscalls:sys_enter_futex", "context-switches",
                      "sched:sched_wakeup", "page-faults", "task-clock"]
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
