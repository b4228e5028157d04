"""A stand-in Ollama server for tests: the routes h2ostack uses, in Ollama's shapes.

`GET /api/tags` (the local models: `{"models": [{"name", "model", "modified_at", "size", "digest",
"details"}]}`), `GET /api/version` (`{"version"}`), `GET /` ("Ollama is running"), and the
OpenAI-compatible routes under `/v1`: `GET /v1/models` and `POST /v1/chat/completions`, streamed
(server-sent events ending in `data: [DONE]`) or not. A name without a tag means `:latest`, as in
Ollama; a model that is not pulled gets Ollama's 404.

Usage: python tests/ollama_standin.py --port P [--host H] [--model NAME]... [--listed-after S]
  --listed-after S  the models appear in /api/tags (and answer) only S seconds after start, as after
                    an `ollama pull`; the server itself answers at once
The answer to a chat is fixed: "Paris is the capital of France." (REPLY overrides it), one word a chunk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERSION = "0.12.6"
STARTED = time.time()


def full_name(name: str) -> str:
    return name if ":" in name else name + ":latest"


def tag_entry(name: str) -> dict[str, Any]:
    family = name.split(":", 1)[0]
    return {"name": name, "model": name, "modified_at": "2025-10-03T23:34:03.409490317-07:00",
            "size": 91739413, "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                        "parameter_size": "134.52M", "quantization_level": "Q4_1"}}


class Server(ThreadingHTTPServer):
    daemon_threads = True


def make_handler(models: list[str], listed_after: float, reply: str) -> type[BaseHTTPRequestHandler]:
    def pulled() -> list[str]:
        return models if time.time() - STARTED >= listed_after else []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def send(self, code: int, body: Any, ctype: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/":
                self.send(200, "Ollama is running", "text/plain; charset=utf-8")
            elif self.path == "/api/version":
                self.send(200, {"version": VERSION})
            elif self.path == "/api/tags":
                self.send(200, {"models": [tag_entry(m) for m in pulled()]})
            elif self.path == "/v1/models":
                self.send(200, {"object": "list", "data": [
                    {"id": m, "object": "model", "created": int(STARTED), "owned_by": "library"} for m in pulled()]})
            else:
                self.send(404, "404 page not found", "text/plain")

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("content-length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self.send(400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
                return
            if self.path != "/v1/chat/completions":
                self.send(404, "404 page not found", "text/plain")
                return
            model = str(body.get("model") or "")
            if full_name(model) not in pulled():
                self.send(404, {"error": {"message": f'model "{model}" not found, try pulling it first',
                                          "type": "api_error", "param": None, "code": None}})
                return
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                self.send(400, {"error": {"message": "invalid message format", "type": "invalid_request_error"}})
                return
            words = reply.split(" ")
            limit = body.get("max_tokens") or body.get("max_completion_tokens")
            if isinstance(limit, int) and limit > 0:
                words = words[:limit]
            finish = "length" if len(words) < len(reply.split(" ")) else "stop"
            base = {"id": f"chatcmpl-{int(time.time() * 1000) % 1000}", "created": int(time.time()),
                    "model": model, "system_fingerprint": "fp_ollama"}
            if not body.get("stream"):
                self.send(200, {**base, "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                     "finish_reason": finish}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": len(words),
                              "total_tokens": 10 + len(words)}})
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
            for i, piece in enumerate([*pieces, ""]):
                last = i == len(pieces)
                chunk = {**base, "object": "chat.completion.chunk", "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": piece},
                     "finish_reason": finish if last else None}]}
                data = b"data: " + json.dumps(chunk).encode() + b"\n\n" + (b"data: [DONE]\n\n" if last else b"")
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

    return Handler


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="ollama_standin")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--listed-after", type=float, default=0.0)
    args = parser.parse_args(argv)
    models = [full_name(m) for m in args.model or ["smollm:135m"]]
    reply = os.environ.get("REPLY", "Paris is the capital of France.")
    server = Server((args.host, args.port), make_handler(models, args.listed_after, reply))
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
