"""save_pretrained / from_pretrained / push_to_hub: a model directory that travels (a run's final/,
each checkpoint's weights, a Hugging Face Hub repo):

    config.json          the recipe's model section (model/config.py): architecture and shape, with
                         transformers' keys beside it
    model.safetensors    the weights
    tokenizer.json       the tokenizer, a `tokenizers` file (data/tokenize/tokenizer.py)       when known
    README.md            the model card (model/card.py)
    recipe.yaml          the resolved recipe the model was trained with              when known
    *.py, tokenizer_config.json, generation_config.json
                         the same model for transformers (AutoModelForCausalLM, trust_remote_code;
                         model/hf/export.py), code generated from this package

Every model class takes the `Pretrained` mixin: huggingface_hub's PyTorchModelHubMixin with these
files. `BDH.from_pretrained(dir_or_hub_id)` builds its own class and refuses another's weights;
`bdh_scale.model.load_pretrained(dir_or_hub_id)` (registry.py) builds whichever architecture
config.json names. A loaded model keeps the optional files as `tokenizer`, `card` and `recipe`, so
its save_pretrained and push_to_hub write them again.

A directory is written atomically. The Hub is read through hf_hub_download and its cache; with
HF_HUB_OFFLINE=1 only the cache is read, so a model that is not there fails at once. Every
failure to load is one ModelError saying what was tried and what would work.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from contextlib import contextmanager
from pathlib import Path

import yaml
from huggingface_hub import HfApi, ModelCard, PyTorchModelHubMixin, constants, errors as hub, hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bdh_scale.data.tokenize.tokenizer import TOKENIZER_FILE, load_tokenizer
from bdh_scale.errors import ModelError
from bdh_scale.model.base import ModelBase
from bdh_scale.model.card import PAPER, model_card
from bdh_scale.model.config import ModelConfig
from bdh_scale.model.hf.export import MODEL_TYPE, transformers_keys, write_transformers_files
from bdh_scale.utils.atomic import atomic_path
from bdh_scale.utils.bounded import read_json, read_yaml

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
RECIPE_NAME = "recipe.yaml"
HUB_KWARGS = ("revision", "cache_dir", "force_download", "local_files_only", "token")
HUB_TIMEOUT_S = 10  # one request to learn whether the Hub answers, instead of a download's retries


# -- where the files come from: a local directory or a Hub repo --------------------------------------

def hub_offline() -> bool:
    """HF_HUB_OFFLINE as it is now (huggingface_hub reads it once, when imported)."""
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return constants.HF_HUB_OFFLINE or flag in {"1", "ON", "YES", "TRUE"}


@functools.lru_cache(maxsize=None)
def hub_reachable(name: str, revision: str | None = None) -> bool:
    """Whether the Hub answers for model `name`: one request with a timeout and no retries (a
    download retries for ~25 s with no network). A missing repo or revision raises, as huggingface_hub
    does (hub_errors turns it into one line); False when the Hub cannot be reached at all, so that
    only the local cache is read."""
    try:
        HfApi().model_info(name, revision=revision, timeout=HUB_TIMEOUT_S)
    except (hub.HFValidationError, hub.RepositoryNotFoundError, hub.RevisionNotFoundError):
        raise
    except hub.HfHubHTTPError:
        return True  # the Hub answered (e.g. a gated repo): the download will say what it needs
    except Exception:  # no network, DNS, proxy, timeout
        return False
    return True


def read_locally(name: str, hub_kwargs: dict) -> bool:
    """local_files_only for `name`: asked for, HF_HUB_OFFLINE, or a Hub that does not answer."""
    if hub_kwargs.get("local_files_only") or hub_offline():
        return True
    with hub_errors(name):
        return not hub_reachable(name, hub_kwargs.get("revision"))


def looks_local(name: str) -> bool:
    """A path rather than a Hub id (owner/name): absolute, relative with ./ or ~, or deeper than one /."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")


@contextmanager
def hub_errors(name: str):
    """huggingface_hub's failures for model `name` as one ModelError: what was tried, what would work."""
    not_local = f"{name}: no such directory"
    try:
        yield
    except hub.HFValidationError:
        raise ModelError(f"{not_local}, and not a Hugging Face Hub id (owner/name); pass a run directory, "
                         "its final/ directory or a Hub id") from None
    except hub.RepositoryNotFoundError:  # gated repos included
        raise ModelError(f"{not_local}, and no such model on the Hugging Face Hub (a private or gated one needs "
                         "`hf auth login` or HF_TOKEN)") from None
    except hub.RevisionNotFoundError:
        raise ModelError(f"{name}: the Hub repo has no such revision; pass an existing branch, tag or commit") from None
    except hub.LocalEntryNotFoundError:
        why = ("the Hugging Face Hub is offline (HF_HUB_OFFLINE)" if hub_offline()
               else "the Hugging Face Hub could not be reached")
        raise ModelError(f"{not_local}, {why} and the Hub cache holds no copy; pass a run directory or its final/ "
                         "directory, or go online") from None
    except hub.OfflineModeIsEnabled:
        raise ModelError(f"{not_local}, and the Hugging Face Hub is offline (HF_HUB_OFFLINE); pass a run directory "
                         "or its final/ directory") from None
    except hub.HfHubHTTPError as e:
        raise ModelError(f"{name}: the Hugging Face Hub refused ({str(e).splitlines()[0]})") from None


def model_file(name: str, filename: str, required: bool = True, **hub_kwargs) -> Path | None:
    """`filename` of model `name`: a local directory's file, or the Hub repo's, downloaded into the
    Hub cache (hub_kwargs: revision, cache_dir, force_download, local_files_only, token). A missing
    optional file is None."""
    local = Path(name).expanduser()
    if local.is_dir():
        path = local / filename
        if path.is_file() or not required:
            return path if path.is_file() else None
        raise ModelError(f"{name} has no {filename}; expected a model directory (a run's final/ or a checkpoint, "
                         f"with {CONFIG_NAME} and {WEIGHTS_NAME}), a run directory or a Hub id")
    if looks_local(name):
        raise ModelError(f"{name}: no such directory; pass a run directory, its final/ directory or a Hugging Face "
                         "Hub id (owner/name)")
    kwargs = {k: v for k, v in hub_kwargs.items() if k in HUB_KWARGS and v is not None}
    kwargs["local_files_only"] = read_locally(name, kwargs)
    with hub_errors(name):
        try:
            return Path(hf_hub_download(repo_id=name, filename=filename, **kwargs))
        except hub.RemoteEntryNotFoundError:
            if required:
                raise ModelError(f"{name} on the Hugging Face Hub has no {filename}; it was not saved by "
                                 "bdh-scale's save_pretrained") from None
        except hub.LocalEntryNotFoundError:
            if required:
                raise
    return None  # an optional file the repo does not have (or, offline, that was never cached)


# -- reading ----------------------------------------------------------------------------------

def write_model_config(directory: Path, config: ModelConfig, with_tokenizer: bool) -> None:
    """<directory>/config.json, the model section with transformers' keys beside it, and the files
    that make the directory load with transformers too (model/hf/export.py). `with_tokenizer`:
    the directory holds tokenizer.json."""
    fields = {**dataclasses.asdict(config), **transformers_keys(config)}
    (Path(directory) / CONFIG_NAME).write_text(json.dumps(fields, indent=2) + "\n")
    write_transformers_files(directory, config, with_tokenizer)


def config_from(fields: dict, overrides: dict, where: str) -> ModelConfig:
    """The model section from config.json's fields, with `overrides` applied. A config.json for
    transformers (model_type bdh_scale, also as transformers' save_pretrained rewrites it) holds
    transformers' own keys beside the section's: those are not the model's."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    if fields.get("model_type") == MODEL_TYPE:
        fields = {k: v for k, v in fields.items() if k in known}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ModelError(f"{where}/{CONFIG_NAME}: unknown fields {', '.join(unknown)}; not a bdh-scale model config")
    return ModelConfig(**{**fields, **overrides})


def read_config(name: str | Path, **hub_kwargs) -> ModelConfig:
    """The model config saved with model `name` (a directory or a Hub id)."""
    fields = read_json(model_file(str(name), CONFIG_NAME, **hub_kwargs), error=ModelError, what="model config")
    if not isinstance(fields, dict):
        raise ModelError(f"{name}/{CONFIG_NAME} holds a JSON {type(fields).__name__}, not an object of model fields")
    return config_from(fields, {}, str(name))


def read_weights(path: Path) -> dict:
    """The state dict in a safetensors file; a checkpoint written under DDP names every tensor
    `module.<name>`, and transformers' save_pretrained `model.<name>`: the prefix is dropped."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{path}: the weights cannot be read ({str(e).splitlines()[0]}); the file is damaged or "
                         "not a safetensors file") from None
    for prefix in ("module.", "model."):  # DDP's wrapper; transformers' BDHScaleForCausalLM (model/hf/)
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


class Pretrained(PyTorchModelHubMixin, ModelBase, library_name="bdh-scale", paper_url=PAPER,
                 pipeline_tag="text-generation", tags=["bdh"]):
    """save_pretrained / from_pretrained / push_to_hub for a model built from the recipe's model
    section (model/base.py: the arch, config translation and the files that travel with it)."""

    # -- writing ----------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *, tokenizer=None, card: ModelCard | None = None,
                        recipe: dict | None = None, push_to_hub: bool = False, repo_id: str | None = None, **kwargs):
        """Write the model directory atomically (it appears complete or not at all). `tokenizer`
        (anything load_tokenizer takes), `card` and `recipe` become the model's own first. With
        push_to_hub, then upload it to `repo_id` (default: the directory's name) and return the
        commit's URL."""
        if tokenizer is not None:
            self.tokenizer = load_tokenizer(tokenizer)
        self.card = card if card is not None else self.card
        self.recipe = recipe if recipe is not None else self.recipe
        directory = Path(save_directory)
        with atomic_path(directory, is_dir=True) as tmp:
            super().save_pretrained(tmp, config=kwargs.pop("config", None),
                                    model_card_kwargs=kwargs.pop("model_card_kwargs", None))
        return self.push_to_hub(repo_id or directory.name, **kwargs) if push_to_hub else None

    def _save_pretrained(self, save_directory: Path) -> None:
        """The files other than README.md, which the mixin writes from generate_model_card."""
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        write_model_config(save_directory, self.model_config(), with_tokenizer=self.tokenizer is not None)
        save_file(state, str(save_directory / WEIGHTS_NAME), metadata={"format": "pt"})
        if self.tokenizer is not None:
            self.tokenizer.save(save_directory)
        if self.recipe is not None:
            (save_directory / RECIPE_NAME).write_text(yaml.safe_dump(self.recipe, sort_keys=False))

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        return self.card if self.card is not None else model_card(self)

    # -- reading ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """The model saved in a local directory or a Hub repo (owner/name), with its tokenizer,
        card and recipe. Keyword arguments: the Hub's (revision, token, cache_dir, ...) and
        overrides of model fields that do not change the weights (e.g. attn_backend="chunked")."""
        name = str(pretrained_model_name_or_path)
        if Path(name).expanduser().is_dir():
            name = str(Path(name).expanduser())
        read_config(name, **kwargs)  # a clear error first, the file's size bounded; then the mixin reads it (cached)
        kwargs["local_files_only"] = Path(name).is_dir() or read_locally(name, kwargs)
        with hub_errors(name):
            return super().from_pretrained(name, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, config: dict | None = None, map_location: str = "cpu",
                         strict: bool = True, **kwargs):
        hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        if config is None:
            raise ModelError(f"{model_id}: {CONFIG_NAME} could not be read")
        model_config = config_from(config, kwargs, model_id)
        if model_config.arch != cls.arch:
            raise ModelError(f"{model_id} holds a model.arch={model_config.arch} model, not {cls.arch}; "
                             "load it with bdh_scale.model.load_pretrained")
        model = cls.from_config(model_config)
        try:
            model.load_state_dict(read_weights(model_file(model_id, WEIGHTS_NAME, **hub_kwargs)), strict=strict)
        except RuntimeError as e:  # missing, unexpected or mis-shaped tensors
            raise ModelError(f"{model_id}: the weights do not match {CONFIG_NAME} "
                             f"({' '.join(str(e).split())[:300]})") from None
        tokenizer = model_file(model_id, TOKENIZER_FILE, required=False, **hub_kwargs)
        model.tokenizer = None if tokenizer is None else load_tokenizer(tokenizer)
        card = model_file(model_id, CARD_NAME, required=False, **hub_kwargs)
        model.card = None if card is None else ModelCard.load(card)
        recipe = model_file(model_id, RECIPE_NAME, required=False, **hub_kwargs)
        model.recipe = None if recipe is None else read_yaml(recipe, error=ModelError, what="model recipe")
        return model.to(map_location).eval()


def push_folder(folder: str | Path, repo_id: str, *, token: str | None = None, private: bool | None = None,
                commit_message: str = "Upload bdh-scale model", **upload_kwargs) -> str:
    """Upload a saved model directory (e.g. a run's final/) to the Hub repo `repo_id`, created if
    needed; returns the commit's URL. The same two calls as the mixin's push_to_hub, for a
    directory already on disk."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    return str(api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                 commit_message=commit_message, **upload_kwargs))
