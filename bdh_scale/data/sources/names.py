"""What data.source can name: a bundled sample, a local file, directory or glob of known kinds,
remote files of those kinds (an http://, https:// or hf:// URL, or a URL glob: files a data host
serves, read through `datasets`' fsspec layer), or (anything else) a Hugging Face Hub dataset."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from bdh_scale.errors import DataError

BUNDLED_DIR = Path(__file__).parents[1] / "bundled"  # bdh_scale/data/bundled
BUNDLED = {
    "tinyshakespeare": "tinyshakespeare/input.txt",
    "europarl_en_fr": "europarl/fr-en/{fr,en}.txt (formatted as <FR:...>/<EN:...> pairs)",
    "europarl_en": "europarl/fr-en/en.txt (the English side alone, running text)",
    "europarl_fr": "europarl/fr-en/fr.txt (the French side alone, running text)",
}
BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json",
            ".parquet": "parquet"}
OFFLINE_ALTERNATIVES = (
    "a local .txt/.jsonl/.parquet file, directory or glob; a shard dir made by "
    "`python -m data_prep.tokenize`; or a bundled sample: " + ", ".join(map(repr, BUNDLED)))


REMOTE = ("http://", "https://", "hf://")


def is_remote(source: str) -> bool:
    """A URL of remote data files (not a Hub dataset name)."""
    return source.startswith(REMOTE)


def looks_like_path(source: str) -> bool:
    """A string that can only mean a local path (so a miss is "no such file", not a hub name)."""
    if is_remote(source):
        return False
    return (source.startswith(("/", "./", "../", "~")) or any(c in source for c in "*?[")
            or Path(source).suffix.lower() in BUILDERS or os.path.exists(source))


def local_files(source: str) -> list[str]:
    """Files named by a path, directory (searched recursively) or glob; DataError if none."""
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                       if Path(f).suffix.lower() in BUILDERS and os.path.isfile(f))
        if not files:
            raise DataError(f"data.source: directory '{source}' holds no "
                            f"{'/'.join(BUILDERS)} files and no meta.json (shard dir)")
        return files
    if any(c in path for c in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise DataError(f"data.source: glob '{source}' matches no files")
        return files
    if not os.path.isfile(path):
        raise DataError(f"data.source: no such file or directory: '{source}'")
    return [path]


def names_files(source: str) -> bool:
    """data.source names files (local or remote) rather than a bundled sample or a Hub dataset."""
    return is_remote(source) or looks_like_path(source)


def data_files(source: str) -> list[str]:
    """The files data.source names: local_files, or the URLs a remote URL or URL glob resolves to
    (datasets.data_files.resolve_pattern, the resolution load_dataset uses; hf:// through the Hub's
    file system). DataError when there are none or the host cannot be reached."""
    if not is_remote(source):
        return local_files(source)
    from datasets.data_files import resolve_pattern

    try:
        files = sorted(resolve_pattern(source, base_path=""))
    except FileNotFoundError:
        raise DataError(f"data.source: no files at '{source}'; check the URL (a glob such as "
                        "https://host/corpus/*.jsonl is resolved from the host's directory listing)") from None
    except Exception as e:  # aiohttp / OS errors: the host does not answer
        raise DataError(f"data.source: the host of '{source}' cannot be reached ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}); offline alternatives: "
                        f"{OFFLINE_ALTERNATIVES}") from None
    return files


def builder_for(files: list[str], source: str) -> str:
    kinds = {BUILDERS.get(Path(f).suffix.lower()) for f in files}
    if None in kinds:
        bad = next(f for f in files if Path(f).suffix.lower() not in BUILDERS)
        raise DataError(f"data.source: '{bad}' has an unknown extension; "
                        f"use one of {', '.join(BUILDERS)}")
    if len(kinds) > 1:
        raise DataError(f"data.source: '{source}' mixes {sorted(kinds)} files; "
                        "point it at one kind (e.g. a glob '*.jsonl')")
    return kinds.pop()
