# A stand-in for IsSettled, for checking the cluster mode by hand on a test cluster
# (docs/cluster.md, "Checking it on a real cluster"). Each refresh mints the next token; only the
# newest two are accepted (the one before stays valid for a moment, as followers take up to a
# second to learn the new one). Tokens are t-0, t-1, ...: plain text, never real secrets, which
# is why this log may print them.
import http.server, json, sys, threading

lock, valid, minted = threading.Lock(), ["t-0"], [0]

class Stub(http.server.BaseHTTPRequestHandler):
    def answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        with lock:
            ok = token in valid
            if ok and self.path == "/oauth-token/refresh":
                minted[0] += 1
                valid[:] = [valid[-1], f"t-{minted[0]}"]
                body = {"access_token": valid[-1]}
            else:
                body = {"ok": True} if ok else {"code": "UNAUTHORIZED", "short_message": "token not valid"}
        data = json.dumps(body).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        print(self.command, self.path, token, "->", 200 if ok else 401, flush=True)

    do_GET = do_POST = do_DELETE = answer
    def log_message(self, *args): pass

http.server.ThreadingHTTPServer(("", int(sys.argv[1]) if len(sys.argv) > 1 else 8080), Stub).serve_forever()
