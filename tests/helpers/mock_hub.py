"""A Hugging Face Hub on the local disk, for tests that push and pull models without a network.

Uploads (HfApi.create_repo / upload_folder, as the mixin's push_to_hub and train.push_to_hub call
them) write each commit into a Hub cache directory laid out as huggingface_hub lays out its own
(models--owner--name/refs/main, snapshots/<commit>/...). With HF_HUB_OFFLINE=1 the real
hf_hub_download then reads pushed models back from that cache, so loading a Hub id runs the
library's own code path.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace


class LocalHub:
    def __init__(self, cache: Path):
        self.cache = cache
        self.calls: list[tuple] = []

    def api(self, token=None, **_):
        hub = self

        class Api:
            def create_repo(self, repo_id, private=None, exist_ok=False, **_):
                hub.calls.append(("create_repo", repo_id, token))
                return SimpleNamespace(repo_id=repo_id)

            def upload_folder(self, repo_id, folder_path, repo_type="model", commit_message="", **_):
                hub.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
                return hub.commit(repo_id, Path(folder_path))

        return Api()

    def commit(self, repo_id: str, folder: Path) -> str:
        repo = self.cache / f"models--{repo_id.replace('/', '--')}"
        commit = hashlib.sha1(f"{repo_id}{len(self.calls)}".encode()).hexdigest()
        shutil.copytree(folder, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        return f"https://huggingface.co/{repo_id}/commit/{commit}"


def install(monkeypatch, root: Path, token: str | None = "hf_test") -> LocalHub:
    """Route uploads to a LocalHub under `root` and reads to its cache; `token`: the credentials the
    process appears to have (None: none). Set HF_HUB_OFFLINE=1 before reading (pushing refuses it)."""
    import huggingface_hub
    from huggingface_hub import constants, hub_mixin

    from bdh_scale.model import pretrained

    hub = LocalHub(root / "hub-cache")
    hub.cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(pretrained, "HfApi", hub.api)
    monkeypatch.setattr(hub_mixin, "HfApi", hub.api)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub.cache))
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    return hub
