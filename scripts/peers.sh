#!/usr/bin/env bash
# Provision the Python peer venv idempotently: the oracle (mlx[cpu], mlx-lm, safetensors,
# tokenizers), mlx-knife's JSON schema validator (jsonschema), the hub client (huggingface_hub)
# and the OpenAI client (openai).
# Prints the venv's python path on stdout; everything else goes to stderr.
# The venv lives outside the checkout so that a fresh clone reuses it: its directory name
# carries a hash of the pins, so changing a pin builds a new one instead of mutating the old.
set -euo pipefail

PINS=(
  "mlx[cpu]==0.32.4"
  "mlx-lm==0.32.2"
  "safetensors==0.8.0"
  "tokenizers==0.23.3"
  "jsonschema==4.26.0"
  "huggingface_hub==2.4.0"
  "openai==3.57.0"
)

pin_hash=$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-12)
venv="${MLXK_PEER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxk-fs/peers-$pin_hash}"
stamp="$venv/.mlxk-peers-ok"

if [ -f "$stamp" ] && [ -x "$venv/bin/python" ]; then
  echo "$venv/bin/python"
  exit 0
fi

py=${MLXK_PYTHON:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
  echo "peers.sh: $py not found; install Python 3.10+ to run the peer tests" >&2
  exit 1
fi

echo "peers.sh: creating peer venv at $venv (${PINS[*]})" >&2
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$py" -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}" >&2
# Smoke-check the oracle before declaring the venv good.
"$venv/bin/python" - >&2 <<'PY'
import mlx.core as mx, mlx_lm, safetensors, tokenizers, jsonschema, huggingface_hub, openai
mx.set_default_device(mx.cpu)
assert mx.array([1, 2]).sum().item() == 3
PY
touch "$stamp"
echo "$venv/bin/python"
