#!/usr/bin/env python3
"""Run the shared proxybench harness with one addition to its origin: a refresh route.

The harness's nginx origin answers 404 to everything it does not know, including
`POST /oauth-token/refresh`. issettled-proxy refreshes its token at start-up and every
`token.refresh_interval`, and a 404 there is a transient failure (retried with back-off).
So that the sidecar runs as it would against IsSettled, this wrapper adds to the origin:

    location = /oauth-token/refresh   401 without the exact bearer token, else 204 No Content

(CONTRACT.md: "response 200 or 204 with no token in it: the current token stays and counts as
refreshed"). Every refresh call is logged, one line each, to --refresh-log, so the
refresh-every-second run can show how many refreshes the origin answered. Nothing else of the
harness changes: the peers, the workloads and the accounting are the shared harness's own.

    bench.py --harness DIR [--refresh-log FILE] -- <proxybench arguments>
"""
import importlib.util
import os
import sys

REFRESH_PATH = "/oauth-token/refresh"


def load_harness(harness_dir):
    path = os.path.join(harness_dir, "lib", "proxybench.py")
    spec = importlib.util.spec_from_file_location("proxybench", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["proxybench"] = mod
    spec.loader.exec_module(mod)
    return mod


def add_refresh_route(pb, refresh_log):
    original = pb.upstream_conf

    def upstream_conf(tmp, port, token, auth_mode, bodies):
        conf = original(tmp, port, token, auth_mode, bodies)
        log = refresh_log or os.path.join(tmp, "upstream", "refresh.log")
        fmt = "    log_format bench_refresh '$msec $request_method $request_uri status=$status';\n"
        route = (
            "        # added by issettled-proxy bench/lib/bench.py: the token refresh call\n"
            "        location = %s {\n"
            "            access_log %s bench_refresh;\n"
            "            if ($bench_auth_ok = 0) { return 401 '{\"error\":\"unauthorized\"}'; }\n"
            "            return 204;\n"
            "        }\n" % (REFRESH_PATH, log)
        )
        anchor_server = "    server {"
        anchor_route = "        location / {"
        if anchor_server not in conf or anchor_route not in conf:
            raise SystemExit("bench.py: the harness's origin config changed shape; cannot add the refresh route")
        conf = conf.replace(anchor_server, fmt + anchor_server, 1)
        conf = conf.replace(anchor_route, route + anchor_route, 1)
        return conf

    pb.upstream_conf = upstream_conf


def main(argv):
    harness = None
    refresh_log = None
    while argv and argv[0] != "--":
        if argv[0] == "--harness":
            harness, argv = argv[1], argv[2:]
        elif argv[0] == "--refresh-log":
            refresh_log, argv = os.path.abspath(argv[1]), argv[2:]
        else:
            raise SystemExit("bench.py: unknown option %r (harness options go after --)" % argv[0])
    if harness is None:
        raise SystemExit("bench.py: --harness DIR is required")
    argv = argv[1:] if argv[:1] == ["--"] else argv
    pb = load_harness(harness)
    add_refresh_route(pb, refresh_log)
    return pb.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
