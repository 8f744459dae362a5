#!/usr/bin/env python3
"""User-space instructions per request of issettled-proxy, counted by valgrind's callgrind.

Wall-clock and CPU-time figures on this machine move by 5-10 % between runs, more than most single hot-path
changes are worth. Instruction counts do not move: the same binary and workload give the same count to within a
fraction of a percent, so a change of 1 % shows. They count user-space work only (the kernel's share, about 60 %
of the CPU here, is not in them) and say nothing about cache misses; confirm a change with the harness.

Starts the harness's nginx origin and the sidecar under callgrind (pinned to one CPU: the current-thread runtime,
as in the harness), warms it up, counts only while wrk -c16 puts --duration seconds of load through it, and
prints instructions per request and the top functions (inclusive).

    instructions.py --harness DIR --binary BIN --config TOML [--workload small_get|large_get|small_post]
                    [--duration 8] [--top 40] [--out DIR]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from memory import load_arguments, prepare_load, start_pinned, stop  # noqa: E402


def main(argv):
    ap = argparse.ArgumentParser()
    load_arguments(ap, 18380)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--out", default=None, help="keep the callgrind output here")
    a = ap.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if not shutil.which(tool):
            sys.exit("instructions.py: %s is not installed (apt-get install valgrind)" % tool)

    tmp, out, token_file, path, script = prepare_load(a, "issettled-instr.")

    counts = os.path.join(out, "callgrind.out")
    wrapper = os.path.join(tmp, "under-callgrind")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s %s \"$@\"\n"
                % (counts, os.path.abspath(a.binary)))
    os.chmod(wrapper, 0o755)
    real_binary, a.binary = a.binary, wrapper

    origin = proxy = None
    try:
        origin, proxy, url = start_pinned(a, tmp, token_file, out, path, 120)
        wrk = ["taskset", "-c", "0", "wrk", "-t1", "-c16", "-s", script]
        subprocess.run(wrk + ["-d3s", url], capture_output=True, timeout=120)  # warm-up, not counted
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], capture_output=True, timeout=60, cwd=tmp)
        w = subprocess.run(wrk + ["-d%ds" % a.duration, url], capture_output=True, text=True,
                           timeout=a.duration + 120)
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], capture_output=True, timeout=120, cwd=tmp)
        time.sleep(1)
        m = re.search(r"(\d+) requests in", w.stdout)
        reqs = int(m.group(1)) if m else 0
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", w.stdout)
        dumps = sorted(p for p in os.listdir(out) if p.startswith("callgrind.out"))
        dump = os.path.join(out, dumps[-1]) if dumps else None
        if not dump or not reqs:
            sys.exit("instructions.py: no dump or no requests (wrk said: %s)" % w.stdout.strip())
        ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
                             capture_output=True, text=True, timeout=300).stdout
        total = None
        for line in ann.splitlines():
            t = re.match(r"\s*([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", line)
            if t:
                total = int(t.group(1).replace(",", ""))
        print("binary %s, %s, %d requests counted%s" % (real_binary, a.workload, reqs,
                                                         ", %s non-2xx" % non2xx.group(1) if non2xx else ""))
        if total:
            print("instructions per request (user space, whole process): %.0f" % (total / reqs))
        shown = 0
        for line in ann.splitlines() if a.top > 0 else []:
            f = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(\S.*)", line)
            if f and "PROGRAM TOTALS" not in line:
                print("  %9.0f /req %6s%%  %s" % (int(f.group(1).replace(",", "")) / reqs, f.group(2),
                                                  f.group(3)[:150]))
                shown += 1
                if shown >= a.top:
                    break
        if a.out:
            print("callgrind output: %s" % dump)
    finally:
        stop(proxy)
        stop(origin)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
