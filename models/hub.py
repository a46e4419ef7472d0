"""Drafts named by Hugging Face hub id, ``ORG/REPO:FILE.gguf`` (as llama.cpp's ``-hf``).

``huggingface_hub`` downloads the file once, with its progress bar, into its own cache
(``HF_HUB_CACHE`` / ``HF_HOME``), and later runs read it from there, offline too. When the
file is not cached and the hub cannot be reached, the error says what to fetch and where to
put it, since these are the machines that most often have no route to the hub.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgespec.models.paths import ModelNotFound

HUB_ID = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+):(?P<file>[^:]+\.gguf)", re.IGNORECASE)


def parse_hub_id(spec: str) -> tuple[str, str] | None:
    """(repo id, file name) for ``ORG/REPO:FILE.gguf``, else None."""
    match = HUB_ID.fullmatch(spec)
    return (match["repo"], match["file"]) if match else None


def hub_gguf(repo: str, filename: str, cache_dir: Path | None = None) -> Path:
    """The cached file (downloaded first when missing and the hub is reachable)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, cache_dir=cache))
    except LocalEntryNotFoundError as exc:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        folder = cache / f"models--{repo.replace('/', '--')}"
        raise ModelNotFound(
            f"draft {repo}:{filename} is not in the Hugging Face cache {cache} and the hub "
            f"cannot be reached{offline}. On a machine with internet run `hf download {repo} "
            f"{filename}` and copy its cache folder {folder.name} to {folder}, or download "
            f"the file and pass its path to --draft.") from exc
    except (RepositoryNotFoundError, EntryNotFoundError) as exc:
        raise ModelNotFound(f"draft {repo}:{filename} is not on the Hugging Face hub "
                            f"(no such repository or file): {exc}") from exc
    except HfHubHTTPError as exc:
        raise ModelNotFound(f"cannot download draft {repo}:{filename}: {exc}") from exc
