"""A Python environment like the one a shared model meets: torch, transformers, safetensors and
tokenizers with what they require, and nothing else: no bdh-scale, no einops, none of this
project's other dependencies.

Building it with pip would download and install torch (minutes). Instead it is a fresh virtual
environment whose site-packages holds symbolic links to exactly those distributions' installed
files, taken from this interpreter's environment: the requirement closure of the four packages,
read from their installed metadata (markers evaluated, extras not taken). It runs with `python -I`
(no PYTHONPATH, no user site, no current directory on sys.path) from a directory outside the
project, so whatever it imports comes from those links or the standard library; the script it runs
checks that bdh_scale and einops cannot be found.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import venv
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REMOTE = ("torch", "transformers", "safetensors", "tokenizers")
# The python of another such environment, to run tests/test_hf_isolated.py against another transformers
# version (the script still checks that bdh_scale and einops are absent), e.g. after
#   python -m venv /tmp/tf && /tmp/tf/bin/pip install torch==2.13.0 transformers==5.10.1 safetensors tokenizers
#   BDH_SCALE_REMOTE_PYTHON=/tmp/tf/bin/python pytest tests/test_hf_isolated.py
OTHER = "BDH_SCALE_REMOTE_PYTHON"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names=REMOTE) -> dict[str, metadata.Distribution]:
    """The installed distributions `names` need, themselves included (no extras)."""
    found, todo = {}, [canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency this platform does not install
        found[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonical(req.name))
    return found


def top_level_entries(dist: metadata.Distribution) -> set[Path]:
    """The files and directories a distribution puts directly in site-packages."""
    root = Path(dist.locate_file(""))
    entries = set()
    for f in dist.files or []:
        first = Path(f).parts[0]
        if first in ("..", "__pycache__") or first.endswith(".pth"):
            continue
        entries.add(root / first)
    return {e for e in entries if e.exists()}


def make(root: Path) -> Path:
    """The environment in `root`; its python."""
    venv.create(root, with_pip=False, symlinks=True)
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for dist in closure().values():
        for entry in top_level_entries(dist):
            link = site / entry.name
            if not link.exists():
                link.symlink_to(entry)
    return python


def run(python: Path, script: Path, args: dict, cwd: Path, timeout: int = 300) -> dict:
    """Run `script` there with `args` (JSON, as argv[1]); the JSON it prints last."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd), "HF_HOME": str(cwd / "hf"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([str(python), "-I", str(script), json.dumps(args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(lines[-1])
