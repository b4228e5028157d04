"""`python -m h2ostack.front STACK_FILE --front NAME --host H --port P`: serve one front."""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m h2ostack.front")
    ap.add_argument("stack_file")
    ap.add_argument("--front", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    args = ap.parse_args()

    from h2ostack.front.app import build_app
    from h2ostack.gateway import serve

    app = build_app(args.stack_file, args.front)
    serve(app, args.host, args.port, timeout_graceful_shutdown=3)


if __name__ == "__main__":
    main()
