"""The version pins say the truth: what is installed fits them, everything the code imports is
declared, and the APIs that set the lower bounds (named beside each pin in pyproject.toml) exist."""
import ast
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = [Requirement(r) for r in metadata.requires("bdh-scale")]
IMPORTED_AS = {"yaml": "pyyaml", "fla": "fla-core", "lm_eval": "lm-eval"}  # import name -> distribution
# read only when already loaded (data/sources/retry.py asks sys.modules first): the HTTP clients of whatever
# filesystem datasets opened, whose errors tell a network fault from a bug; never needed otherwise
IF_LOADED = {"aiohttp", "httpx", "requests"}


def canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def test_the_installed_versions_fit_the_pins():
    core = [r for r in REQUIREMENTS if r.marker is None]
    assert {canonical(r.name) for r in core} >= {"torch", "accelerate", "datasets", "einops", "wandb", "numpy", "pyarrow"}
    for r in core:
        assert r.specifier.contains(metadata.version(r.name), prereleases=True), f"{r.name} {metadata.version(r.name)} is not {r}"
    for r in REQUIREMENTS:  # the extras this environment installed (dev, eval) fit too
        if r.marker is not None and r.marker.evaluate({"extra": "dev"}):
            assert r.specifier.contains(metadata.version(r.name), prereleases=True), f"{r.name}: {r}"


def imported_modules() -> dict[str, Path]:
    """Top-level third-party modules imported anywhere in the package and data_prep."""
    found = {}
    for path in [*(ROOT / "bdh_scale").rglob("*.py"), *(ROOT / "data_prep").rglob("*.py")]:
        if "hf" in path.parts and path.name in ("modeling_bdh.py", "configuration_bdh.py"):
            continue  # run inside transformers, which brings its own
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("bdh_scale", "data_prep", "__future__"):
                    found.setdefault(top, path)
    return found


def test_everything_imported_is_declared():
    declared = {canonical(r.name) for r in REQUIREMENTS}
    missing = {m: str(p.relative_to(ROOT)) for m, p in imported_modules().items()
               if canonical(IMPORTED_AS.get(m, m)) not in declared and m not in IF_LOADED}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_apis_that_set_the_lower_bounds_exist():
    import accelerate
    import datasets
    import torch
    import yaml
    from huggingface_hub import errors

    assert hasattr(torch._dynamo.config, "recompile_limit")  # torch >= 2.7
    assert isinstance(getattr(accelerate.Accelerator, "is_fsdp2"), property)  # accelerate >= 1.6
    assert hasattr(datasets.config, "STREAMING_OPEN_MAX_RETRIES")  # datasets >= 4.3
    assert hasattr(errors, "RemoteEntryNotFoundError")  # huggingface_hub >= 1.0
    assert hasattr(yaml.SafeLoader, "get_single_node")
