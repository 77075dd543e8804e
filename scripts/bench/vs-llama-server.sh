#!/usr/bin/env bash
# Continuous batching side by side: the same streamed chat requests, 1, 2 and 4 at once,
# against `spillway serve` (4 session slots) and llama.cpp's `llama-server -np 4`
# (continuous batching on) on the same GGUF file and thread count, one after the other on
# an otherwise idle machine. Prints both tables (scripts/bench/concurrency.py measures).
#
#   scripts/bench/vs-llama-server.sh MODEL.gguf [THREADS] [MAX_TOKENS]
#
# A model without a download: `spillway synth --shape 3b --quant q4_0 --tekken
# ../shared/fixtures/tekken_v13.json --out /tmp/3b-q4_0.gguf`.
#
# llama.cpp is built once from llama-cpp-python's source package (the version the fixtures
# use; pip downloads it from PyPI) into ~/.cache/spillway/llama.cpp-<version>, with cmake
# (apt-get install cmake) for the CPU it runs on: ~10 minutes on 2 cores. Needs mosquitto
# (the daemon takes prompts over MQTT too) and the Python environment of
# scripts/python-env.sh (the openai package).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

model=$(realpath "${1:?usage: $0 MODEL.gguf [THREADS] [MAX_TOKENS]}")
threads=${2:-2}
max_tokens=${3:-64}
streams=(1 2 4)
llama_version=0.3.36
cache=${XDG_CACHE_HOME:-$HOME/.cache}/spillway
llama_dir=$cache/llama.cpp-$llama_version

python=$(scripts/python-env.sh)
command -v cmake >/dev/null || { echo "needs cmake (apt-get install cmake)" >&2; exit 1; }
command -v mosquitto >/dev/null || { echo "needs mosquitto (apt-get install mosquitto)" >&2; exit 1; }

if [[ ! -x $llama_dir/build/bin/llama-server ]]; then
    echo "== building llama.cpp (llama-cpp-python $llama_version's source) in $llama_dir" >&2
    mkdir -p "$llama_dir"
    "$python" -m pip download --quiet --no-binary :all: --no-deps \
        "llama-cpp-python==$llama_version" -d "$llama_dir/sdist"
    tar -xzf "$llama_dir"/sdist/llama_cpp_python-*.tar.gz -C "$llama_dir"
    src=$(echo "$llama_dir"/llama_cpp_python-*/vendor/llama.cpp)
    # -march=native turns on llama.cpp's AMX kernels on a CPU that has AMX, and they crash
    # (SIGSEGV on the first batch) in a VM that does not grant the AMX tile state: there,
    # name the instruction sets instead.
    isa=(-DGGML_NATIVE=ON)
    if grep -qw amx_tile /proc/cpuinfo; then
        has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
        isa=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
            -DGGML_BMI2=ON -DGGML_AVX512="$(has avx512f)" -DGGML_AVX512_VNNI="$(has avx512_vnni)"
            -DGGML_AVX512_VBMI="$(has avx512_vbmi)" -DGGML_AVX512_BF16="$(has avx512_bf16)"
            -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
    fi
    cmake -S "$src" -B "$llama_dir/build" -DCMAKE_BUILD_TYPE=Release "${isa[@]}" \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_HTML=OFF \
        -DLLAMA_BUILD_APP=OFF >&2
    cmake --build "$llama_dir/build" --target llama-server llama-bench llama-batched-bench \
        -j "$(nproc)" >&2
fi

cargo build --release -p spillway >&2
spillway=${CARGO_TARGET_DIR:-$PWD/target}/release/spillway
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$1$2" >/dev/null && return 0
        sleep 0.5
    done
    echo "no answer on port $1" >&2
    return 1
}
# measure PORT TITLE [EXTRA-JSON]: the streams against the server on PORT, once it answers.
measure() {
    local extra=${3:-'{}'}
    wait_http "$1" /health
    echo
    echo "-- $2"
    "$python" scripts/bench/concurrency.py --base-url "http://127.0.0.1:$1/v1" \
        --streams "${streams[@]}" --max-tokens "$max_tokens" --extra "$extra"
}

ctx=$((2 * (max_tokens + 128)))
echo "== $(basename "$model"), $threads threads, $max_tokens tokens per stream; CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"

# spillway serve: 4 session slots, no queue refusals.
mqtt_port=$(free_port)
mosquitto -p "$mqtt_port" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
http_port=$(free_port)
cat >"$work/spillway.toml" <<EOF
[model]
path = "$model"
[engine]
threads = $threads
context = $ctx
sessions = 4
[mqtt]
broker = "mqtt://127.0.0.1:$mqtt_port"
device = "bench"
[service]
queue = 16
state_dir = "$work/state"
telemetry_secs = 0
[http]
listen = "127.0.0.1:$http_port"
EOF
"$spillway" serve --config "$work/spillway.toml" >"$work/spillway.log" 2>&1 &
spid=$!
pids+=($spid)
measure "$http_port" "spillway serve (sessions = 4)"
kill "$spid"
wait "$spid" 2>/dev/null || true

# llama-server: 4 parallel slots of the same context each, continuous batching.
llama_port=$(free_port)
"$llama_dir/build/bin/llama-server" -m "$model" -t "$threads" -tb "$threads" -np 4 \
    -c $((4 * ctx)) --cont-batching --host 127.0.0.1 --port "$llama_port" \
    >"$work/llama-server.log" 2>&1 &
lpid=$!
pids+=($lpid)
measure "$llama_port" "llama-server -np 4 --cont-batching" '{"ignore_eos": true}'
