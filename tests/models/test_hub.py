"""``--draft ORG/REPO:FILE.gguf`` through huggingface_hub, offline, against a hub cache laid
out here (as ``hf download`` leaves it) around the bundled GGUF: no machine here reaches a hub.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from edgespec.models.hub import hub_gguf, parse_hub_id
from edgespec.models.paths import ModelNotFound, file_digest, resolve_draft

REPO = "edgespec-test/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, draft_gguf: Path) -> Path:
    """blobs/<sha256> (a link to the bundled GGUF), snapshots/<commit>/<file> → the blob,
    refs/main → the commit: huggingface_hub's cache layout."""
    repo = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}"
    blob = repo / "blobs" / file_digest(draft_gguf)
    blob.parent.mkdir(parents=True)
    blob.symlink_to(draft_gguf)
    snapshot = repo / "snapshots" / COMMIT / FILE
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return tmp_path / "hub"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_hub_ids_are_org_repo_colon_gguf():
    assert parse_hub_id(f"{REPO}:{FILE}") == (REPO, FILE)
    assert parse_hub_id("bartowski/Llama-3.2-1B-Instruct-GGUF:sub/x.Q4_K_M.gguf") == (
        "bartowski/Llama-3.2-1B-Instruct-GGUF", "sub/x.Q4_K_M.gguf")
    for not_hub in ("default", "model.gguf", "org/repo", "org/repo:weights.bin",
                    "/abs/path:x.gguf"):
        assert parse_hub_id(not_hub) is None


def test_cached_hub_draft_resolves_offline(hub_cache, offline, draft_gguf):
    path = hub_gguf(REPO, FILE, cache_dir=hub_cache)
    assert path == hub_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT / FILE
    assert path.samefile(draft_gguf)


def test_missing_hub_draft_offline_says_what_to_download_where(hub_cache, offline):
    with pytest.raises(ModelNotFound) as caught:
        hub_gguf(REPO, "other.Q8_0.gguf", cache_dir=hub_cache)
    message = str(caught.value)
    assert f"hf download {REPO} other.Q8_0.gguf" in message
    assert str(hub_cache) in message and "HF_HUB_OFFLINE is set" in message


def test_a_local_file_wins_over_a_hub_id(tmp_path, draft_gguf, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "org" / "repo:x.gguf"
    local.parent.mkdir()
    local.symlink_to(draft_gguf)
    assert resolve_draft("org/repo:x.gguf", tmp_path) == Path("org/repo:x.gguf")


@pytest.mark.slow
def test_generate_drafts_with_a_hub_id_offline_and_says_why_not(daemon, hub_cache):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)}
    cli = [sys.executable, "-m", "edgespec.edge_client.cli", "generate", "--server",
           daemon.endpoint, "--threads", "1", "--prompt", "Say hi.", "--max-tokens", "8",
           "--json"]
    done = subprocess.run([*cli, "--draft", f"{REPO}:{FILE}"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stats"]["generated"] > 0
    missing = subprocess.run([*cli, "--draft", f"{REPO}:absent.gguf"], capture_output=True,
                             text=True, env=env, timeout=300)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert f"hf download {REPO} absent.gguf" in missing.stderr
