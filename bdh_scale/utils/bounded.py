"""Reading the small files that configure a run or a model, so that no file can take the machine.

A recipe, an override, a model directory's config.json and recipe.yaml, a checkpoint's manifest
and trainer state, a shard directory's meta.json and a tokenizer file are all read here:

* a size limit per file, checked while reading (a FIFO or /dev/zero stops at the limit, too);
* YAML composed first and its size counted with every alias expanded, before any value is
  built: a 480-byte file of nested aliases names a billion values, and everything downstream
  (checks, error messages, asdict, yaml.safe_dump) would walk them all;
* values quoted in error messages through `short`, a bounded repr.

Each refusal is one UsageError (the caller's kind: ConfigError, ModelError, ...) naming the file.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import yaml

from bdh_scale.errors import ConfigError, UsageError
from bdh_scale.utils.quote import SHORT

MAX_CONFIG_BYTES = 1 << 20       # recipes, config.json, manifests, meta.json: a few KB in practice
MAX_TOKENIZER_BYTES = 256 << 20  # a tokenizer.json of a 250k vocabulary is ~30 MB
MAX_YAML_VALUES = 100_000        # values of a YAML document with every alias expanded (a recipe: ~100)


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def read_bytes(path: str | Path, limit: int = MAX_CONFIG_BYTES, error: type[UsageError] = ConfigError,
               what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes; `error` naming the file otherwise."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} '{path}' not found") from None
    except OSError as e:
        raise error(f"{what} '{path}' cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} '{path}' is not a regular file; pass a file")
    if info.st_size > limit:
        raise error(f"{what} '{path}' is {_size(info.st_size)}, more than the {_size(limit)} such a file may have; "
                    "is it the right file?")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # the file may have grown since stat
    except OSError as e:
        raise error(f"{what} '{path}' cannot be read ({e.strerror})") from None
    if len(data) > limit:
        raise error(f"{what} '{path}' is more than the {_size(limit)} such a file may have; is it the right file?")
    return data


def read_text(path: str | Path, limit: int = MAX_CONFIG_BYTES, error: type[UsageError] = ConfigError,
              what: str = "file") -> str:
    data = read_bytes(path, limit, error, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} '{path}' is not a text file (not UTF-8)") from None


def read_json(path: str | Path, limit: int = MAX_CONFIG_BYTES, error: type[UsageError] = ConfigError,
              what: str = "file"):
    """The value a JSON file holds (bounded as read_bytes)."""
    text = read_text(path, limit, error, what)
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"{what} '{path}' nests its values too deeply to be read") from None
    except ValueError as e:  # JSONDecodeError, and an integer of more digits than Python converts
        raise error(f"{what} '{path}' is not valid JSON ({str(e)[:SHORT]})") from None


def _expanded(node, memo: dict, open_: set) -> int:
    """Values under `node`, every alias counted as often as it is used."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise ValueError("an alias refers to a value that contains it")
    open_.add(key)
    if isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_expanded(child, memo, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        n = 1 + sum(_expanded(k, memo, open_) + _expanded(v, memo, open_) for k, v in node.value)
    else:
        n = 1
    open_.discard(key)
    memo[key] = n
    return n


def load_yaml(text: str, where: str, error: type[UsageError] = ConfigError):
    """The value of one YAML document (safe tags only), refused in one line when its aliases
    expand to more than MAX_YAML_VALUES values. yaml.YAMLError is left to the caller, which
    knows how to say where the syntax broke."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            values = _expanded(node, {}, set())
        except ValueError as e:
            raise error(f"{where}: {e} (a recursive YAML alias); write the value out") from None
        if values > MAX_YAML_VALUES:
            raise error(f"{where}: its YAML aliases expand to {values:,} values, more than the {MAX_YAML_VALUES:,} "
                        "a configuration may hold; write the values out instead of nesting aliases")
        return loader.construct_document(node)
    except UsageError:
        raise
    except RecursionError:
        raise error(f"{where}: the YAML nests its values too deeply to be read") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise error(f"{where}: a YAML value cannot be read ({str(e)[:SHORT]})") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path, limit: int = MAX_CONFIG_BYTES, error: type[UsageError] = ConfigError,
              what: str = "file"):
    """The value a YAML file holds, bounded in size and in alias expansion."""
    return load_yaml(read_text(path, limit, error, what), f"{what} '{path}'", error)
