"""A stand-in for vLLM's OpenAI server, launched by tests through `ServerConfig.command`.

    python fake_vllm_server.py --port N --name NAME [--mode serve|exit|hang] [--message TEXT]
        [--grandchild PIDFILE] [--ignore-term] [--pidfile PIDFILE]

serve: answers GET /v1/models with NAME. exit: prints TEXT and exits 1 (a failed start-up).
hang: never listens. --grandchild forks a child that writes its pid and sleeps, as vLLM's
engine core does; --ignore-term makes that child ignore SIGTERM so only SIGKILL ends it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def spawn_grandchild(pidfile: str, ignore_term: bool) -> None:
    pid = os.fork()
    if pid == 0:
        if ignore_term:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open(pidfile, "w") as fh:
            fh.write(str(os.getpid()))
        while True:
            time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="fake")
    ap.add_argument("--mode", choices=["serve", "exit", "hang"], default="serve")
    ap.add_argument("--message", default="fake server failed")
    ap.add_argument("--grandchild")
    ap.add_argument("--ignore-term", action="store_true")
    ap.add_argument("--pidfile")
    args = ap.parse_args()
    if args.pidfile:
        with open(args.pidfile, "w") as fh:
            fh.write(str(os.getpid()))
    if args.grandchild:
        spawn_grandchild(args.grandchild, args.ignore_term)
    print(f"fake server starting on port {args.port}", flush=True)
    if args.mode == "exit":
        print(args.message, flush=True)
        sys.exit(1)
    if args.mode == "hang":
        while True:
            time.sleep(0.2)
    name = args.name

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path != "/v1/models":
                self.send_error(404)
                return
            body = json.dumps({"object": "list", "data": [{"id": name, "object": "model"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
