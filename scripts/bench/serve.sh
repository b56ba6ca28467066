#!/usr/bin/env bash
# Benchmark of `mlxk serve` (release) against llama.cpp's llama-server and mlx-lm's server, in
# one run, on the 0.43B Llama of scripts/bench/run.sh (hidden 1024, 24 layers, vocab 32000):
# 4-bit group 64 by `python -m mlx_lm convert` for mlxk and mlx-lm, Q4_0 by llama-quantize for
# llama.cpp. Each level runs N concurrent streamed /v1/completions requests (distinct 64-token
# prompts, 128 greedy tokens each, no early end: mlxk's copy of the model has no eos id,
# llama-server gets ignore_eos) ROUNDS times; reported per level: aggregate generated tok/s
# over the wall time, time to first token p50 / p99, each stream's decode tok/s
# (scripts/bench/serve_load.py). Both servers have 8 slots (mlxk --max-concurrency 8,
# llama-server -np 8): at 16 streams half of the requests queue. `mlxk run` on the same prompt
# gives the single-stream reference. mlx-lm's server on the CPU is orders of magnitude slower
# (0.35 tok/s decode, docs/benchmarks.md): it runs 1 stream of MLX_TOKENS tokens only.
#
#   scripts/bench/serve.sh [ROUNDS]     (default 2)
#   LEVELS=1,2,4,8,16  MLX_TOKENS=8  SKIP_LLAMA_CPP=1  SKIP_MLX_LM=1
# llama.cpp is built by scripts/bench/llama_cpp.sh the first time (~30 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-2}
levels=${LEVELS:-1,2,4,8,16}
cargo build --release --quiet --bin mlxk --example fixture_cache --example bandwidth
mlxk=$PWD/target/release/mlxk
py=$(scripts/peers.sh)
work=$(mktemp -d -p "${MLXK_BENCH_DIR:-/var/tmp}" mlxk-serve-bench.XXXXXX)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

echo "mlxk-fs $(git rev-parse --short HEAD), $(uname -r), $(nproc) cores, rounds=$rounds, levels=$levels"
target/release/examples/fixture_cache llama "$work/hub" 1024 24 4096 32000 1 bf16 >/dev/null
bf16=$(echo "$work"/hub/models--bench--llama/snapshots/*)
# The fixture's byte-level tokenizer names 259 of the 32000 ids; random weights pick any id, and
# an unnamed one decodes to nothing, so a stream would send almost no text (and time to first
# token would measure nothing). Every other id becomes a two-byte token (no merge produces
# them: prompts still encode byte by byte).
"$py" - "$bf16/tokenizer.json" 32000 <<'PY'
import json, sys
path, vocab = sys.argv[1], int(sys.argv[2])
t = json.load(open(path))
v = t["model"]["vocab"]
alphabet = sorted(v, key=v.get)[:256]
for k in range(len(v), vocab):
    a, b = divmod(k - 259, 256)
    v[alphabet[a] + alphabet[b]] = k
json.dump(t, open(path, "w"))
PY
"$py" -m mlx_lm convert --hf-path "$bf16" --mlx-path "$work/q4" -q --q-bits 4 --q-group-size 64 >/dev/null 2>&1
cp -r "$work/q4" "$work/q4-noeos"
"$py" - "$work/q4-noeos" <<'PY'
import json, pathlib, sys
for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
    p = pathlib.Path(sys.argv[1], name)
    if p.exists():
        d = json.loads(p.read_text())
        d.pop("eos_token_id", None)
        d.pop("eos_token", None)
        p.write_text(json.dumps(d))
PY
prompt='The quick brown fox jumps over the lazy dog, again and again ...'
bandwidth() { target/release/examples/bandwidth 2048 3 | sed -E 's/read bandwidth: ([0-9.]+) GB\/s.*/\1 GB\/s/'; }

wait_port() { # url pid
  for _ in $(seq 1 600); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { echo "the server exited" >&2; return 1; }
    sleep 0.5
  done
  echo "the server never answered $1" >&2
  return 1
}

# Time the hypervisor gave the VM's CPUs to someone else (/proc/stat's steal ticks, every CPU),
# as a share of the elapsed CPU time: this VM's runs have lost up to half of it, which halves a
# server's figures without any change of its own.
cpu_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t }' /proc/stat; }
load() { # name url model max_tokens levels rounds [extra]
  local name=$1 before after
  shift
  echo "-- $name (bandwidth $(bandwidth))"
  before=$(cpu_ticks)
  "$py" scripts/bench/serve_load.py "$@" | tee "$work/$name.jsonl"
  after=$(cpu_ticks)
  echo "$before $after" | awk '{ printf "   (%s: CPU time stolen by the hypervisor %.1f%%)\n", n, 100 * ($3 - $1) / ($4 - $2) }' n="$name"
}

# The single-stream reference: `mlxk run`, warm.
"$mlxk" run "$work/q4-noeos" "$prompt" --max-tokens 16 --temperature 0 --no-chat-template >/dev/null 2>&1
for i in 1 2 3; do
  "$mlxk" --json run "$work/q4-noeos" "$prompt" --max-tokens 128 --temperature 0 \
    --repetition-penalty 1 --no-chat-template | "$py" -c '
import json, sys
d = json.load(sys.stdin)["data"]
t, u = d["timing"], d["usage"]
print("-- mlxk run: prompt %s tok/s, decode %s tok/s (%d tokens)" % (t["prompt_tps"], t["decode_tps"], u["completion_tokens"]))'
done

# mlxk serve
port=18431
"$mlxk" serve --port $port --model "$work/q4-noeos" --max-concurrency 8 >"$work/mlxk.log" 2>&1 &
server=$!
wait_port "http://127.0.0.1:$port/health" $server
load mlxk-serve "http://127.0.0.1:$port/v1" "$work/q4-noeos" "$levels" "$rounds" 128
# Single-stream decode without streaming (the load generator parsing a stream shares the two
# cores with the server): 128 tokens after the first, from whole answers of 1 and 129 tokens.
"$py" - "http://127.0.0.1:$port/v1/completions" "$work/q4-noeos" "$prompt" <<'PY'
import json, statistics, sys, time, urllib.request
url, model, prompt = sys.argv[1:4]
def took(n):
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0}).encode()
    t = time.perf_counter()
    urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"})).read()
    return time.perf_counter() - t
rates = [128 / (took(129) - took(1)) for _ in range(3)]
print("   (mlxk serve, one whole answer at a time: decode %.1f tok/s median of %s)"
      % (statistics.median(rates), ", ".join("%.1f" % r for r in rates)))
PY
curl -s "http://127.0.0.1:$port/health" | "$py" -c '
import json, sys
m = json.load(sys.stdin)["models_loaded"][0]
print("   (mlxk: %d steps, peak batch %d, %d tokens)" % (m["steps"], m["peak_batch"], m["tokens_generated"]))'
kill $server; wait $server 2>/dev/null || true; server=""

# llama.cpp's llama-server, Q4_0
if [ -z "${SKIP_LLAMA_CPP:-}" ]; then
  bin=$(scripts/bench/llama_cpp.sh)
  "$py" scripts/bench/hf_to_gguf.py "$(scripts/bench/llama_cpp.sh --gguf-py)" "$bf16" "$work/f16.gguf"
  "$bin/llama-quantize" "$work/f16.gguf" "$work/q4_0.gguf" Q4_0 >/dev/null 2>&1
  rm "$work/f16.gguf"
  echo "-- llama.cpp $(cd "$(dirname "$bin")/.." && git describe --tags 2>/dev/null || basename "$(dirname "$(dirname "$bin")")"), Q4_0 $(du -sh "$work/q4_0.gguf" | cut -f1)"
  # Its AMX matmul crashes on AMX CPUs: the CPU backend built without it (llama_cpp.sh).
  LD_LIBRARY_PATH=$(scripts/bench/llama_cpp.sh --no-amx-lib) "$bin/llama-server" -m "$work/q4_0.gguf" --host 127.0.0.1 --port $port -np 8 -c 2048 -t "$(nproc)" \
    --no-webui >"$work/llama.log" 2>&1 &
  server=$!
  wait_port "http://127.0.0.1:$port/health" $server
  load llama-server "http://127.0.0.1:$port/v1" q4_0 "$levels" "$rounds" 128 '{"ignore_eos": true}'
  kill $server; wait $server 2>/dev/null || true; server=""
  # llama.cpp's fastest single stream on this CPU, for reference: llama-bench's decode on the
  # native build, whose AMX kernels decode (they crash every time above 64 rows, and now and
  # then below: up to 3 tries).
  echo "-- llama-bench (native build, AMX where the CPU has it), Q4_0, decode of 128 tokens:"
  for try in 1 2 3; do
    if out=$("$bin/llama-bench" -m "$work/q4_0.gguf" -p 0 -n 128 -t "$(nproc)" -r 3 2>/dev/null); then
      echo "$out" | grep tg128
      break
    fi
    echo "   (llama-bench crashed, try $try of 3)"
  done
fi

# mlx-lm's server (CPU): one stream, a few tokens.
if [ -z "${SKIP_MLX_LM:-}" ]; then
  "$py" -m mlx_lm server --model "$work/q4" --host 127.0.0.1 --port $port >"$work/mlx.log" 2>&1 &
  server=$!
  wait_port "http://127.0.0.1:$port/v1/models" $server
  load mlx-lm-server "http://127.0.0.1:$port/v1" "$work/q4" 1 1 "${MLX_TOKENS:-8}" '{"stream": false}'
  kill $server; wait $server 2>/dev/null || true; server=""
fi
