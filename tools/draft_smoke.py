"""One tiny draft decode in a child process, before the test suite starts.

A llama.cpp build that crashes on this CPU (the AMX kernels of ggml-org/llama.cpp#20824)
would otherwise die with a bare ``Segmentation fault`` in the middle of the suite. Here the
crash happens in a child, and the parent prints the CPU's feature line and the fix.

    python -m edgespec.tools.draft_smoke          # exit 0: the draft decodes on this CPU
"""

from __future__ import annotations

import signal
import subprocess
import sys

from edgespec.models.cpu import cmake_args, cpu_flags, cpu_model


def decode_once() -> None:
    """Load the bundled draft and decode a few tokens, as the first drafter test does."""
    from edgespec.edge_client.drafter import Drafter
    from edgespec.models.paths import default_draft_gguf

    drafter = Drafter(default_draft_gguf(), n_ctx=64, n_threads=1)
    drafter.sync(drafter.tokenize("Hello, world"))
    drafter.draft(2)


def crash_report(returncode: int) -> str:
    """What a user needs when the child died: which signal, this CPU, and the fix."""
    how = (f"killed by {signal.Signals(-returncode).name}" if returncode < 0
           else f"exited with status {returncode}")
    flags = cpu_flags()
    lines = [f"edgespec: a one-token llama.cpp draft decode {how}.",
             f"CPU: {cpu_model()}", f"flags: {' '.join(sorted(flags))}"]
    args = cmake_args(flags)
    if args:
        lines += ["This CPU has AMX, whose llama.cpp kernels crash on some CPUs "
                  "(ggml-org/llama.cpp#20824). Rebuild llama-cpp-python without them:",
                  f'  CMAKE_ARGS="{args}" pip install --force-reinstall --no-cache-dir '
                  "--no-deps llama-cpp-python",
                  "(tools/test and tools/demo do this by themselves on a fresh .venv: "
                  "`rm .venv/.edgespec-installed` makes them reinstall.)"]
    else:
        lines += ["Run `edgespec doctor` for this machine's llama.cpp build and features."]
    return "\n".join(lines)


def main() -> int:
    if sys.argv[1:] == ["--child"]:
        decode_once()
        return 0
    child = subprocess.run([sys.executable, "-m", "edgespec.tools.draft_smoke", "--child"],
                           capture_output=True, text=True)
    if child.returncode == 0:
        return 0
    sys.stderr.write(child.stderr[-2000:])
    print(crash_report(child.returncode), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
