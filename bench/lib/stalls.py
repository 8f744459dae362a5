#!/usr/bin/env python3
"""Delivery stalls under load: how many responses are late by a timer, and which TCP sender is waiting.

Starts the harness's nginx origin on CPU 0 and, on CPU 1, issettled-proxy or nginx as the proxy (the harness's
pin split), puts wrk -t1 -c64 on CPU 0 (64 KiB GET by default), and for each round prints:
- req/s, p50/p99/p99.9/max, and the share of responses slower than --late-ms (30 ms by default: well above
  this machine's queueing, well below the 40 ms minimum of Linux's delayed-ACK timer);
- with --sample: stuck senders seen by `ss -ti` in the middle of the round (unacknowledged data, nothing sent,
  received or acknowledged for >= 15 ms), with the receiving end of the same connection beside each.

    stalls.py --harness DIR --binary BIN --config TOML [--proxy issettled|nginx] [--workload large_get]
              [--rounds 3] [--duration 5] [--sample]

This is how the 64 KiB tail was traced to delayed ACKs (bench/README.md, "The 64 KiB tail").
"""
import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as benchlib  # noqa: E402
from memory import load_arguments, prepare_load, start_pinned, stop, wait_ready  # noqa: E402

WRK_DONE = r'''
function done(summary, latency, requests)
  local lo, hi = 0, 100
  for i = 1, 40 do
    local mid = (lo + hi) / 2
    if latency:percentile(mid) < LATE_US then lo = mid else hi = mid end
  end
  io.write(string.format("STALLS %d %d %d %d %d %.4f\n", summary.requests, latency:percentile(50),
    latency:percentile(99), latency:percentile(99.9), latency.max, 100 - lo))
end
'''

DROP = re.compile(r"bbr:\([^)]*\)|pacing_rate \S+|delivery_rate \S+|send \S+bps")


def sockets(ports):
    """{(local, peer): (recv_q, send_q, info)} for established TCP sockets on any of `ports`."""
    flt = " or ".join("sport = :%d or dport = :%d" % (p, p) for p in ports)
    out = subprocess.run(["ss", "-tinH", "state", "established", "( %s )" % flt],
                         capture_output=True, text=True).stdout.splitlines()
    found = {}
    for head, info in zip(out[0::2], out[1::2]):
        p = head.split()
        found[(p[2], p[3])] = (int(p[0]), int(p[1]), re.sub(r"\s+", " ", DROP.sub("", info)).strip())
    return found


def stuck_senders(ports, seconds, keep=4):
    """Sample `ss` for `seconds`; count senders on `ports` waiting >= 15 ms with data unacknowledged."""
    counts, examples = {}, []
    end = time.time() + seconds
    while time.time() < end:
        socks = sockets(ports)
        for (local, peer), (_, send_q, info) in socks.items():
            port = int(local.rsplit(":", 1)[1])
            idle = [int(m) for m in re.findall(r"last(?:snd|ack):(\d+)", info)]
            if port in ports and send_q > 0 and idle and min(idle) >= 15:
                counts[port] = counts.get(port, 0) + 1
                if len(examples) < keep:
                    rx = socks.get((peer, local))
                    examples.append("  sender %s -> %s, send-q %d: %s\n  receiver: %s"
                                    % (local, peer, send_q, info, rx[2] if rx else "?"))
        time.sleep(0.005)
    return counts, examples


def main(argv):
    ap = argparse.ArgumentParser()
    load_arguments(ap, 18380)
    ap.set_defaults(workload="large_get")
    ap.add_argument("--proxy", choices=["issettled", "nginx"], default="issettled")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--late-ms", type=float, default=30.0)
    ap.add_argument("--sample", action="store_true", help="sample `ss -ti` for stuck senders during each round")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.sample and a.duration < 4:
        ap.error("--sample needs --duration 4 or more")

    tmp, out, token_file, path, script = prepare_load(a, "issettled-stalls.")
    with open(script) as f:
        body = f.read()
    with open(script, "w") as f:
        f.write(body[:body.index("function done")] + WRK_DONE.replace("LATE_US", str(int(a.late_ms * 1000))))

    origin = proxy = None
    try:
        origin, proxy, url = start_pinned(a, tmp, token_file, out, path, 30)
        if a.proxy == "nginx":
            stop(proxy)
            pb = benchlib.load_harness(a.harness)
            d = os.path.join(tmp, "nginx")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "nginx.conf"), "w") as f:
                f.write(pb.nginx_peer_conf(tmp, a.proxy_port, a.origin_port, pb.DEFAULT_TOKEN, 1))
            proxy = subprocess.Popen(["taskset", "-c", "1", "nginx", "-p", d + "/", "-e",
                                      os.path.join(d, "error.log"), "-c", os.path.join(d, "nginx.conf")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
            wait_ready(a.proxy_port, proxy, 10)
        def wrk(seconds):
            return ["taskset", "-c", "0", "wrk", "-t1", "-c64", "-d%ds" % seconds, "-s", script, url]
        subprocess.run(wrk(2), capture_output=True, timeout=60)
        print("%s, %s, %d s rounds; late = over %.0f ms" % (a.proxy, a.workload, a.duration, a.late_ms))
        for r in range(a.rounds):
            load = subprocess.Popen(wrk(a.duration), stdout=subprocess.PIPE, text=True)
            sampled = None
            if a.sample:
                time.sleep(1)
                sampled = stuck_senders([a.origin_port, a.proxy_port], a.duration - 2)
            res = load.communicate(timeout=a.duration + 60)[0]
            m = re.search(r"^STALLS (\d+) (\d+) (\d+) (\d+) (\d+) ([\d.]+)$", res, re.M)
            if not m:
                sys.exit("stalls.py: no result from wrk:\n" + res)
            n, p50, p99, p999, mx, late = m.groups()
            print("round %d: %7.0f req/s  p50 %6s  p99 %6s  p99.9 %6s  max %6s us  late %.3f %%"
                  % (r + 1, int(n) / a.duration, p50, p99, p999, mx, float(late)))
            if sampled:
                counts, examples = sampled
                print("  stuck senders seen (samples): origin :%d -> proxy %d, proxy :%d -> wrk %d"
                      % (a.origin_port, counts.get(a.origin_port, 0), a.proxy_port, counts.get(a.proxy_port, 0)))
                for e in examples:
                    print(e)
    finally:
        if proxy:
            stop(proxy)
        if origin:
            stop(origin)


if __name__ == "__main__":
    main(sys.argv[1:])
