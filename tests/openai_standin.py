"""A stand-in OpenAI-compatible server for benchmarks and fault tests: binds after a set delay.

Invoked in place of a vLLM interpreter (`python: bench/standin-python`), it takes vLLM's flags,
sleeps START_DELAY seconds before listening (as a server loading weights does), and records the
time of its first healthy answer in READY_LOG so a benchmark can see when readiness was noticed
(SPAWN_LOG: when its interpreter started and when it listened, and its pid).
With STANDIN_IGNORE_SIGTERM=1 it ignores SIGTERM, as a stuck server does; while the file named
by STANDIN_HANG_FILE exists, /health hangs, as a wedged server's does. With
STANDIN_DOWNLOAD_S=N it first "downloads" its `--model` (a hub id) for N seconds, as the hub does:
a blob under the hub cache (HF_HOME) that grows as `.incomplete`, then complete. With
STANDIN_STREAM_CHUNKS=N a request with `"stream": true` is answered as N chat chunks,
STANDIN_LATENCY_MS apart. With VLLM_SERVER_DEV_MODE=1 it serves vLLM's sleep endpoints (POST
/sleep?level=N, POST /wake_up, GET /is_sleeping) and answers 503 to generation while asleep;
`-c CODE` (vLLM's platform question) prints whether it can sleep: STANDIN_CAN_SLEEP=1.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.time()  # the interpreter has started: SPAWN_LOG


class Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: at 64 connections at once the rest of the SYNs
    # are dropped and retried a second later, which benchmarks would measure as latency
    request_queue_size = 1024
    daemon_threads = True


def main(argv: list[str]) -> None:
    args = dict(zip(argv[::2], argv[1::2], strict=False))
    port = int(args.get("--port", "8000"))
    host = args.get("--host", "127.0.0.1")
    model = args.get("--served-model-name", args.get("--model", "m"))
    if os.environ.get("STANDIN_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    latency = float(os.environ.get("STANDIN_LATENCY_MS", "0")) / 1000
    download(args.get("--model", "m"), float(os.environ.get("STANDIN_DOWNLOAD_S", "0")))
    time.sleep(float(os.environ.get("START_DELAY", "0")))
    ready_log = os.environ.get("READY_LOG")
    first = {"done": False}
    dev = os.environ.get("VLLM_SERVER_DEV_MODE") == "1"
    asleep = {"now": False}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes

        def log_message(self, *a: object) -> None:
            pass

        def send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def stream(self, chunks: int) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(chunks + 1):
                time.sleep(latency)
                last = i == chunks
                event = {"id": "x", "object": "chat.completion.chunk", "model": model, "choices": [
                    {"index": 0, "delta": {} if last else {"content": f"t{i} "},
                     "finish_reason": "length" if last else None}]}
                data = b"data: " + json.dumps(event).encode() + b"\n\n" + (b"data: [DONE]\n\n" if last else b"")
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def do_GET(self) -> None:
            hang = os.environ.get("STANDIN_HANG_FILE")
            if self.path == "/health" and hang and os.path.exists(hang):
                time.sleep(3600)
            if self.path == "/health":
                if not first["done"] and ready_log:
                    first["done"] = True
                    with open(ready_log, "a") as fh:
                        fh.write(f"{os.environ.get('H2OSTACK_SERVICE')} {time.time()}\n")
                self.send(200, {})
            elif self.path == "/is_sleeping" and dev:
                self.send(200, {"is_sleeping": asleep["now"]})
            elif self.path == "/v1/models":
                self.send(200, {"object": "list", "data": [{"id": model, "object": "model"}]})
            else:
                self.send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if dev and self.path.split("?")[0] in ("/sleep", "/wake_up"):
                asleep["now"] = self.path.startswith("/sleep")
                self.send(200, {})
                return
            if asleep["now"]:
                self.send(503, {"error": {"message": "asleep", "type": "ServiceUnavailable", "code": 503}})
                return
            if isinstance(body.get("max_tokens"), int) and body["max_tokens"] < 1:  # vLLM's validation
                self.send(400, {"error": {"message": "max_tokens must be at least 1", "type": "BadRequestError",
                                          "code": 400}})
                return
            chunks = int(os.environ.get("STANDIN_STREAM_CHUNKS", "0"))
            if body.get("stream") and chunks:
                self.stream(chunks)
                return
            time.sleep(latency)
            self.send(200, {"id": "x", "object": "text_completion", "model": model,
                            "choices": [{"index": 0, "text": "hi", "finish_reason": "length"}]})

    server = Server((host, port), Handler)
    spawn_log = os.environ.get("SPAWN_LOG")
    if spawn_log:  # when it started and when it listened, for a benchmark's account of a start
        with open(spawn_log, "a") as fh:
            fh.write(f"{os.environ.get('H2OSTACK_SERVICE')} {STARTED} {time.time()} {os.getpid()}\n")
    server.serve_forever()


def download(repo: str, seconds: float) -> None:
    if seconds <= 0:
        return
    home = os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface")
    blobs = os.path.join(home, "hub", "models--" + repo.replace("/", "--"), "blobs")
    os.makedirs(blobs, exist_ok=True)
    part = os.path.join(blobs, "0123abcd.incomplete")
    end = time.monotonic() + seconds
    with open(part, "ab") as fh:
        while time.monotonic() < end:
            fh.write(b"\0" * 65536)
            fh.flush()
            time.sleep(0.2)
    os.replace(part, part.removesuffix(".incomplete"))


if __name__ == "__main__":
    # called as `PY -m vllm.entrypoints.openai.api_server ...`: drop the `-m MODULE`
    rest = sys.argv[1:]
    if rest[:1] == ["-c"]:  # h2ostack asking vLLM's platform whether it can sleep
        print("sleep standin", os.environ.get("STANDIN_CAN_SLEEP") == "1")
        sys.exit(0)
    if rest[:1] == ["-m"]:
        rest = rest[2:]
    main(rest)
