#!/usr/bin/env python3
"""Resident memory of issettled-proxy: idle, after a short load, and with N idle keep-alive connections.

Starts the harness's nginx origin (same config generator as the load runs, with the refresh route) and
the sidecar, then:
  1. idle: RSS once the sidecar is ready (one request has gone through, so one upstream connection exists);
  2. after load: RSS after 5 s of wrk -c64 small GETs (what the allocator keeps after a burst), if wrk exists;
  3. for each N in --conns (default 1000,10000): opens connections until N are open, each sends one small
     GET, reads the whole 200 answer and stays open (keep-alive, idle); then RSS;
  4. waits past listen.header_read_timeout (10 s) and sends a second request on a sample of the oldest
     connections: they must still be open (the header timer does not apply to idle keep-alive connections);
  5. closes everything and reads RSS again.
VmRSS and VmHWM come from /proc/<pid>/status. Writes a JSON file and prints a summary.
Loopback only; every loop is bounded; every process it starts is stopped by its own pid.

    memory.py --harness DIR --binary BIN --config TOML --out FILE [--conns 1000,10000]
"""
import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as benchlib  # noqa: E402


def status_kib(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[k] = int(v.split()[0])
    return out


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def http_get(port, path, timeout=3.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % (path, port)).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return int(data.split(b" ", 2)[1]) if data else 0
    finally:
        s.close()


def read_response(s):
    """Read one HTTP/1.1 response with Content-Length from a blocking socket; return its status."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        rest += chunk
    return status


def wait_ready(port, proc, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("process exited with %s" % proc.returncode)
        try:
            if http_get(port, "/healthz", timeout=1.0) == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("not ready on port %d after %.0fs" % (port, timeout))


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=25)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)



def write_origin_files(pb, tmp, origin_port):
    """Write the harness origin's files under tmp (nginx.conf in tmp/upstream, the 64 KiB body in tmp/www) and
    the token file; returns the token file's path."""
    for sub in ("upstream", "www"):
        os.makedirs(os.path.join(tmp, sub))
    bodies = {"small": pb.small_body(), "large": pb.large_body(), "post_req": pb.post_request_body(),
              "post_resp": pb.post_response_body()}
    with open(os.path.join(tmp, "www", "statement.json"), "w") as f:
        f.write(bodies["large"])
    os.chmod(os.path.join(tmp, "www", "statement.json"), 0o644)
    token_file = os.path.join(tmp, "token")
    with open(token_file, "w") as f:
        f.write(pb.DEFAULT_TOKEN)
    with open(os.path.join(tmp, "upstream", "nginx.conf"), "w") as f:
        f.write(pb.upstream_conf(tmp, origin_port, pb.DEFAULT_TOKEN, "exact", bodies))
    return token_file


def load_arguments(ap, base_port):
    """The arguments the profiling tools share: what to run and where; ports base_port, +10, +11."""
    ap.add_argument("--harness", required=True)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--workload", default="small_get", choices=["small_get", "large_get", "small_post"])
    ap.add_argument("--log-level", default="warn")
    ap.add_argument("--origin-port", type=int, default=base_port)
    ap.add_argument("--proxy-port", type=int, default=base_port + 10)
    ap.add_argument("--admin-port", type=int, default=base_port + 11)


def prepare_load(a, prefix):
    """For the profiling tools: the harness (with the refresh route), a temp dir, the origin's files, and a wrk
    script for `a.workload`. Returns (tmp, out, token_file, path, script); `out` is `a.out` or the temp dir."""
    pb = benchlib.load_harness(a.harness)
    benchlib.add_refresh_route(pb, None)
    tmp = tempfile.mkdtemp(prefix=prefix)
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
    return tmp, out, token_file, path, script


def start_pinned(a, tmp, token_file, out, path, ready_within):
    """For the profiling tools: the origin on CPU 0 and the sidecar on CPU 1 (the harness's pin split). Returns
    (origin, proxy, url of `path` through the sidecar) once the sidecar answers; stops both if it does not."""
    origin, proxy = start_origin_and_proxy(a, tmp, token_file, os.path.join(out, "proxy.log"),
                                           origin_cpu=0, proxy_cpu=1)
    try:
        wait_ready(a.proxy_port, proxy, ready_within)
    except BaseException:
        stop(proxy)
        stop(origin)
        raise
    return origin, proxy, "http://127.0.0.1:%d%s" % (a.proxy_port, path)


def start_origin_and_proxy(a, tmp, token_file, log_path, origin_cpu=None, proxy_cpu=None):
    """Start the harness's nginx origin (config under tmp/upstream) and issettled-proxy in front of it, each in its
    own session, optionally pinned to a CPU; wait for the origin. Returns (origin, proxy) Popen objects."""
    def pinned(cpu, argv):
        return (["taskset", "-c", str(cpu)] + argv) if cpu is not None else argv
    origin = subprocess.Popen(pinned(origin_cpu, ["nginx", "-p", os.path.join(tmp, "upstream") + "/",
                                                  "-e", os.path.join(tmp, "upstream", "error.log"),
                                                  "-c", os.path.join(tmp, "upstream", "nginx.conf")]),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    wait_ready(a.origin_port, origin, 10)
    env = dict(os.environ,
               ISSETTLED_PROXY__LISTEN__ADDRESS="127.0.0.1:%d" % a.proxy_port,
               ISSETTLED_PROXY__LISTEN__ADMIN_ADDRESS="127.0.0.1:%d" % a.admin_port,
               ISSETTLED_PROXY__UPSTREAM__BASE_URL="http://127.0.0.1:%d" % a.origin_port,
               ISSETTLED_PROXY__TOKEN__FILE=token_file,
               ISSETTLED_PROXY__LOG__LEVEL=a.log_level)
    env.pop("RUST_LOG", None)
    log = open(log_path, "wb")
    proxy = subprocess.Popen(pinned(proxy_cpu, [a.binary, "run", "--config", a.config]), env=env,
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    return origin, proxy

def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--harness", required=True)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--conns", default="1000,10000")
    ap.add_argument("--origin-port", type=int, default=18180)
    ap.add_argument("--proxy-port", type=int, default=18190)
    ap.add_argument("--admin-port", type=int, default=18191)
    ap.add_argument("--log-level", default="warn")
    ap.add_argument("--idle-wait", type=float, default=12.0,
                    help="seconds to hold the connections idle before re-using a sample (default 12, > 10 s "
                         "header_read_timeout)")
    a = ap.parse_args(argv)
    steps = [int(x) for x in a.conns.split(",") if x.strip()]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(steps) + 1000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        sys.exit("memory.py: ulimit -n is %d (hard %d); %d connections need about %d" % (soft, hard, max(steps), need))

    pb = benchlib.load_harness(a.harness)
    benchlib.add_refresh_route(pb, None)
    for port in (a.origin_port, a.proxy_port, a.admin_port):
        if pb.port_in_use(port):
            sys.exit("memory.py: port %d already in use" % port)

    tmp = tempfile.mkdtemp(prefix="issettled-mem.")
    os.chmod(tmp, 0o755)
    token_file = write_origin_files(pb, tmp, a.origin_port)

    result = {"schema": "issettled-bench-memory/1", "binary": a.binary, "config": a.config,
              "log_level": a.log_level, "nofile_soft": soft, "steps": []}
    origin = proxy = None
    socks = []
    try:
        origin, proxy = start_origin_and_proxy(a, tmp, token_file, os.path.join(tmp, "proxy.log"))
        wait_ready(a.proxy_port, proxy, 30)
        time.sleep(1.0)
        pid = proxy.pid

        def record(name, **extra):
            st = status_kib(pid)
            row = dict(name=name, vmrss_kib=st.get("VmRSS"), vmhwm_kib=st.get("VmHWM"),
                       rss_anon_kib=st.get("RssAnon"), rss_file_kib=st.get("RssFile"),
                       threads=st.get("Threads"), fds=fd_count(pid), **extra)
            result["steps"].append(row)
            print("  %-28s VmRSS %7.1f MiB  (anon %6.1f, file %5.1f)  VmHWM %7.1f MiB  threads %s  fds %s%s"
                  % (name, row["vmrss_kib"] / 1024, (row["rss_anon_kib"] or 0) / 1024,
                     (row["rss_file_kib"] or 0) / 1024, row["vmhwm_kib"] / 1024, row["threads"], row["fds"],
                     "".join("  %s=%s" % kv for kv in extra.items())), flush=True)

        record("idle")

        wrk = pb.shutil.which("wrk")
        if wrk:
            url = "http://127.0.0.1:%d%s" % (a.proxy_port, pb.P_SMALL)
            r = subprocess.run([wrk, "-t1", "-c64", "-d5s", url], capture_output=True, text=True, timeout=60)
            non2xx = 0
            for line in r.stdout.splitlines():
                if "Non-2xx" in line:
                    non2xx = int(line.split(":")[1])
            time.sleep(1.0)
            record("after 5 s wrk -c64 small GET", non2xx=non2xx)

        req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (pb.P_SMALL, a.proxy_port)).encode()
        bad = 0
        for n in steps:
            t0 = time.time()
            while len(socks) < n:
                if time.time() - t0 > 40:
                    raise RuntimeError("opening connections took over 40 s (at %d)" % len(socks))
                s = socket.create_connection(("127.0.0.1", a.proxy_port), timeout=5)
                s.sendall(req)
                if read_response(s) != 200:
                    bad += 1
                socks.append(s)
            took = time.time() - t0
            time.sleep(1.0)
            record("%d idle keep-alive conns" % n, open_s=round(took, 1), non200=bad)

        if socks and a.idle_wait > 0:
            time.sleep(a.idle_wait)
            record("same, after %.0f s idle" % a.idle_wait)
            sample = socks[:100]
            alive = 0
            for s in sample:
                try:
                    s.sendall(req)
                    if read_response(s) == 200:
                        alive += 1
                except OSError:
                    pass
            result["reuse_after_idle"] = {"sampled": len(sample), "answered_200": alive,
                                          "idle_s": a.idle_wait}
            print("  re-used %d of the oldest %d connections after %.0f s idle: %d answered 200"
                  % (len(sample), len(sample), a.idle_wait, alive), flush=True)

        for s in socks:
            s.close()
        socks = []
        time.sleep(2.0)
        record("after closing them")
        result["non200"] = bad
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        stop(proxy)
        stop(origin)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
