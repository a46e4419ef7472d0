# Sourced by tools/demo and tools/test: create .venv in the checkout and install edgespec
# with everything it needs. Re-running is cheap: it reinstalls only when setup.cfg,
# pyproject.toml or the llama.cpp build flags this CPU needs changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
# llama.cpp's AMX kernels segfault on some AMX CPUs (ggml-org/llama.cpp#20824). On such a
# CPU build llama-cpp-python with every other feature of this CPU and no AMX (empty on other
# CPUs: the default native build is safe there). A CMAKE_ARGS of your own wins.
LLAMA_SPEC="llama-cpp-python==0.3.36"
LLAMA_CMAKE="${CMAKE_ARGS:-$("$VENV/bin/python" "$ROOT/models/cpu.py" cmake-args)}"
STAMP="$VENV/.edgespec-installed"
WANT="$( (cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml"; echo "$LLAMA_SPEC $LLAMA_CMAKE") \
    | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    echo "edgespec: installing into $VENV (the first time compiles llama.cpp: ~6 min on 2 cores)" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # Pinned on purpose: an unpinned torch pulls a multi-GB CUDA build on a CPU-only box.
    # Set EDGESPEC_TORCH to choose another build (e.g. a CUDA wheel on a GPU server).
    "$VENV/bin/python" -m pip install -q "${EDGESPEC_TORCH:-torch==2.13.0}"
    if [ -n "$LLAMA_CMAKE" ]; then
        # pip's own wheel cache ignores CMAKE_ARGS, so keep our build under its flags' hash:
        # a reinstall on this CPU reuses it instead of compiling again.
        KEY="$(echo "$LLAMA_SPEC $LLAMA_CMAKE" | sha256sum | cut -c1-12)"
        WHEELS="${EDGESPEC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgespec}/wheels/llama-$KEY"
        if ! compgen -G "$WHEELS/llama_cpp_python-*.whl" >/dev/null; then
            echo "edgespec: building $LLAMA_SPEC with CMAKE_ARGS=\"$LLAMA_CMAKE\"" >&2
            CMAKE_ARGS="$LLAMA_CMAKE" "$VENV/bin/python" -m pip wheel -q --no-deps \
                --no-cache-dir -w "$WHEELS" "$LLAMA_SPEC"
        fi
        "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall \
            "$WHEELS"/llama_cpp_python-*.whl
    fi
    "$VENV/bin/python" -m pip install -q -e "$ROOT[dev,bench]"
    echo "$WANT" > "$STAMP"
fi
# System packages some tests drive (a browser, Prometheus): installed when missing and root.
if [ -f "$ROOT/tools/_system_deps.sh" ]; then
    source "$ROOT/tools/_system_deps.sh"
fi
export PATH="$VENV/bin:$PATH"
