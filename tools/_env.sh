# Sourced by tools/demo and tools/test: create .venv in the checkout and install edgespec
# with everything it needs. Re-running is cheap: it reinstalls only when setup.cfg or
# pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
STAMP="$VENV/.edgespec-installed"
WANT="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    echo "edgespec: installing into $VENV (the first time compiles llama.cpp: ~6 min on 2 cores)" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # Pinned on purpose: an unpinned torch pulls a multi-GB CUDA build on a CPU-only box.
    # Set EDGESPEC_TORCH to choose another build (e.g. a CUDA wheel on a GPU server).
    "$VENV/bin/python" -m pip install -q "${EDGESPEC_TORCH:-torch==2.13.0}"
    "$VENV/bin/python" -m pip install -q -e "$ROOT[dev,bench]"
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
