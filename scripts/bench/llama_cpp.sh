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
# llama.cpp 0.3.36's AMX matmul crashes (SIGSEGV in ggml_backend_amx_mul_mat, at the first
# graph of llama-server) on a CPU with AMX (seen on Sapphire Rapids): its CPU backend library is
# built a second time without AMX (everything else native), and the servers are run with that
# library first on LD_LIBRARY_PATH (the binaries' RUNPATH yields to it).
#   LD_LIBRARY_PATH=$(scripts/bench/llama_cpp.sh --no-amx-lib)
if [ "${1:-}" = "--no-amx-lib" ]; then
  lib=$src/build-noamx/bin
  if [ ! -f "$lib/libggml-cpu.so" ]; then
    flags="-march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    "$root/tools/bin/cmake" -S "$src" -B "$src/build-noamx" -DCMAKE_BUILD_TYPE=Release \
      -DGGML_NATIVE=OFF -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
    "$root/tools/bin/cmake" --build "$src/build-noamx" -j"$(nproc)" --target ggml-cpu >&2
  fi
  echo "$lib"
  exit 0
fi
echo "$src/build/bin"
