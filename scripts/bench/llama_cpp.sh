#!/usr/bin/env bash
# llama.cpp's llama-server, llama-quantize and llama-bench, built from the llama.cpp vendored in
# the llama-cpp-python sdist (PyPI is reachable where GitHub is not), once: prints the directory
# holding the binaries. cmake comes from a venv of its own. About 30 minutes on 2 cores the
# first time; later calls return at once.
#
#   scripts/bench/llama_cpp.sh   ->  <dir>/bin (llama-server, llama-quantize, llama-bench)
#   GGUF_PY=$(scripts/bench/llama_cpp.sh --gguf-py)   the gguf-py directory of the same tree
set -euo pipefail
version=0.3.36
root=${MLXK_LLAMA_CPP_DIR:-/var/tmp/llamacpp}
src=$root/llama_cpp_python-$version/vendor/llama.cpp
mkdir -p "$root"
if [ ! -f "$src/CMakeLists.txt" ]; then
  python3 - "$version" "$root/sdist.tar.gz" >&2 <<'PY'
import json, sys, urllib.parse, urllib.request
version, dest = sys.argv[1], sys.argv[2]
# The simple index's JSON form (PEP 691): what pip reads, so it is there wherever pip works
# (PyPI's older /pypi/<name>/<version>/json API answered 404 on one of these machines).
meta = "https://pypi.org/simple/llama-cpp-python/"
req = urllib.request.Request(meta, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req))["files"]
sdist = f"llama_cpp_python-{version}.tar.gz"
url = next(f["url"] for f in files if f["filename"] == sdist)
urllib.request.urlretrieve(urllib.parse.urljoin(meta, url), dest)
PY
  tar xzf "$root/sdist.tar.gz" -C "$root"
fi
if [ "${1:-}" = "--gguf-py" ]; then
  echo "$src/gguf-py"
  exit 0
fi
if [ ! -x "$src/build/bin/llama-server" ] || [ ! -x "$src/build/bin/llama-quantize" ]; then
  [ -x "$root/tools/bin/cmake" ] || { python3 -m venv "$root/tools" && "$root/tools/bin/pip" install -q cmake; } >&2
  "$root/tools/bin/cmake" -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
  "$root/tools/bin/cmake" --build "$src/build" -j"$(nproc)" --target llama-server llama-quantize llama-bench >&2
fi
echo "$src/build/bin"
