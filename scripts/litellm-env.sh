#!/usr/bin/env bash
# The LiteLLM proxy (a peer gateway, for bench/peers.py) in its own environment, cached by version
# under $H2OSTACK_CACHE. Prints the environment's interpreter on its last line.
set -euo pipefail
VERSION=${LITELLM_VERSION:-1.106.12}
CACHE=${H2OSTACK_CACHE:-$HOME/.cache/h2ostack}
ENV_DIR="$CACHE/litellm-$VERSION"
STAMP="$ENV_DIR/.h2ostack-ready"

if [ ! -f "$STAMP" ]; then
  echo "litellm-env: creating $ENV_DIR (litellm[proxy]==$VERSION; a minute or two the first time)" >&2
  rm -rf "$ENV_DIR"
  mkdir -p "$CACHE"
  python3 -m venv "$ENV_DIR"
  "$ENV_DIR/bin/pip" install -q --upgrade pip >&2
  "$ENV_DIR/bin/pip" install -q "litellm[proxy]==$VERSION" >&2
  "$ENV_DIR/bin/python" -c 'import litellm.proxy.proxy_server' >&2
  date > "$STAMP"
fi
echo "$ENV_DIR/bin/python"
