#!/usr/bin/env bash
# A real browser for the end-to-end tests: Debian's Chromium, driven by Python Playwright
# (which cannot download a browser of its own here). `--verify` opens a local page and
# takes a screenshot.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  echo "browser: installing chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }
fi
if [ "${1:-}" = "--verify" ]; then
  .venv/bin/python - <<'PY'
import http.server, threading, tempfile, os
from playwright.sync_api import sync_playwright
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
threading.Thread(target=srv.serve_forever, daemon=True).start()
shot = os.path.join(tempfile.mkdtemp(), "browser-check.png")
with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"])
    page = b.new_page()
    page.goto(f"http://127.0.0.1:{srv.server_address[1]}/")
    page.screenshot(path=shot)
    b.close()
srv.shutdown()
print("browser: ok", shot)
PY
fi
