"""A stand-in for TGI's documented HTTP API, to run inside a real container (stdlib only).

Everything after the image name is launcher flags, as with TGI's own image: `--model-id`,
`--port` (default $PORT or 80), `--hostname`, and any others, which `/info` reports back in
`args` so tests can compare them with the plan. While "loading" (`--load-delay` seconds, or
$STANDIN_LOAD_DELAY) nothing listens, so `/health` is refused, as TGI's is. `--crash-at-start`
logs an error and exits 1. With $STANDIN_AUTH set, generation needs that authorization header;
with `--api-key` (or $API_KEY, as TGI 2.3+) it needs `Bearer KEY`, while /health and /info stay
open, as TGI's do. SIGTERM stops it at once, as it stops TGI's launcher (a bare Python as the
container's PID 1 would ignore it and make `docker stop` wait out its timeout). Endpoints: GET /health, GET /info, POST /generate,
POST /generate_stream (server-sent events in TGI's shape, no [DONE]), POST / with `stream`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: at 64 connections at once the rest of the SYNs
    # are dropped and retried a second later, which benchmarks would measure as latency
    request_queue_size = 1024
    daemon_threads = True


WORDS = ["Hello", " from", " the", " stand", "-in", " of", " text", " generation", " inference", "."]


def parse(argv: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    flags: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            key, eq, value = a[2:].partition("=")
            if eq:
                flags[key] = value
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                flags[key] = argv[i + 1]
                i += 1
            else:
                flags[key] = True
        i += 1
    return flags, argv


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    flags, raw = parse(argv)
    print(f"stand-in launcher args: {' '.join(raw)}", flush=True)
    if flags.get("crash-at-start"):
        print("Error: Shard 0 failed to start: CUDA out of memory (stand-in crash)", file=sys.stderr, flush=True)
        sys.exit(1)
    model = str(flags.get("model-id", "unknown"))
    port = int(str(flags.get("port", os.environ.get("PORT", "80"))))
    host = str(flags.get("hostname", "0.0.0.0"))
    delay = float(str(flags.get("load-delay", os.environ.get("STANDIN_LOAD_DELAY", "0"))))
    api_key = str(flags.get("api-key") or os.environ.get("API_KEY") or "")
    token_delay = float(os.environ.get("STANDIN_TOKEN_DELAY", "0.01"))
    max_total = int(str(flags.get("max-total-tokens", 2048)))
    info = {"model_id": model, "model_sha": "0" * 40, "model_dtype": "torch.float16", "model_device_type": "cpu",
            "max_input_tokens": int(str(flags.get("max-input-tokens", flags.get("max-input-length", 1024)))),
            "max_total_tokens": max_total, "max_stop_sequences": int(str(flags.get("max-stop-sequences", 4))),
            "version": "standin", "sha": None, "args": raw}
    print(f"loading {model} ({delay:g} s)", flush=True)
    time.sleep(delay)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, fmt: str, *args: Any) -> None:
            print(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}", flush=True)

        def send_json(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
            elif self.path == "/info":
                self.send_json(200, info)
            else:
                self.send_json(404, {"error": "not found"})

        def read_request(self) -> tuple[str, dict[str, Any]] | None:
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
                inputs = body["inputs"]
                params = body.get("parameters") or {}
                assert isinstance(inputs, str) and isinstance(params, dict)
                n = params.get("max_new_tokens", 20)
                assert isinstance(n, int) and n > 0
            except (ValueError, KeyError, AssertionError):
                self.send_json(422, {"error": "Input validation error: `inputs` must be a string and "
                                              "`max_new_tokens` a positive integer", "error_type": "validation"})
                return None
            if n + len(inputs.split()) > max_total:
                self.send_json(422, {"error": f"Input validation error: inputs + max_new_tokens must be <= "
                                              f"{max_total}", "error_type": "validation"})
                return None
            return inputs, {**params, "max_new_tokens": n, "_stream": body.get("stream", False)}

        def tokens(self, params: dict[str, Any]) -> tuple[list[str], str]:
            n = params["max_new_tokens"]
            out = [WORDS[i % len(WORDS)] for i in range(n)]
            for stop in params.get("stop") or []:
                text = ""
                for i, tok in enumerate(out):
                    text += tok
                    if stop in text:
                        return out[: i + 1], "stop_sequence"
            return out, "length"

        def do_POST(self) -> None:
            want = os.environ.get("STANDIN_AUTH")  # h2oGPT's form: `authorization: USER TOKEN`
            if api_key:
                want = f"Bearer {api_key}"
            if want and self.headers.get("authorization") != want:
                self.send_json(401, {"error": "Unauthorized", "error_type": "authentication"})
                return
            got = self.read_request()
            if got is None:
                return
            _inputs, params = got
            stream = self.path == "/generate_stream" or (self.path == "/" and params.get("_stream"))
            if self.path not in ("/generate", "/generate_stream", "/"):
                self.send_json(404, {"error": "not found"})
                return
            toks, reason = self.tokens(params)
            details = {"finish_reason": reason, "generated_tokens": len(toks), "seed": None}
            if not stream:
                time.sleep(token_delay * len(toks))
                body: dict[str, Any] = {"generated_text": "".join(toks)}
                if params.get("details"):
                    body["details"] = {**details, "prefill": [], "tokens": []}
                self.send_json(200, [body] if self.path == "/" else body)
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            for i, tok in enumerate(toks):
                time.sleep(token_delay)
                last = i == len(toks) - 1
                event = {"index": i, "token": {"id": i, "text": tok, "logprob": -0.5, "special": False},
                         "generated_text": "".join(toks) if last else None, "details": details if last else None}
                self.wfile.write(b"data:" + json.dumps(event).encode() + b"\n\n")
                self.wfile.flush()
            self.close_connection = True

    server = Server((host, port), Handler)
    print(f"Connected; listening on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
