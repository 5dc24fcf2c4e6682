"""The config as the command line shows it, read from the config classes themselves: the help
listing of every key (type, default and the comment beside the field in its class), the flag
forms `--section.key value` and `--section.key=value`, and the resolved recipe as YAML.

The field comments in model/config.py, data/config.py, config.py, ... are the one description of
each key: the help is generated from them, so the help, the schema and the recipes cannot drift
apart.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import io
import tokenize
import types
import typing

import yaml

from bdh_scale.config.sections import RunConfig
from bdh_scale.errors import ConfigError
from bdh_scale.utils.quote import short
from bdh_scale.utils.schema import _type_name


@functools.lru_cache(maxsize=None)
def field_comments(cls) -> dict[str, str]:
    """{field: its comment}: the comment at the end of the field's line, else the comment lines
    right above it; fields a section gathers from other classes (the model section's per
    architecture) are read where they are defined."""
    found = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base) and base is not object:
            found.update(_own_comments(base))
    return found


def _own_comments(cls) -> dict[str, str]:
    source = inspect.getsource(cls)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    found = {}
    for number, line in enumerate(lines, 1):
        name = line.strip().split(":", 1)[0]
        if not (line.startswith("    ") and not line.startswith("     ") and name.isidentifier() and ":" in line):
            continue
        if number in comments and not line.strip().startswith("#"):
            found[name] = comments[number]
            continue
        above, n = [], number - 1
        while n in comments and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        if above:
            found[name] = " ".join(above)
    return found


def type_words(hint) -> str:
    """'int >= 1', 'float in [0, 1)', 'one of auto, stretch or stream', 'int >= 1 or None'."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_words(arm) for arm in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Annotated:
        base, *constraints = typing.get_args(hint)
        return " ".join([type_words(base)] + [c.describe() for c in constraints if hasattr(c, "describe")])
    return "null" if hint is type(None) else _type_name(hint)


def sections(cls=RunConfig, prefix: str = "") -> list[tuple[str, type]]:
    """[(dotted section name, its class)] of the config tree, nested sections after their parent."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            name = f"{prefix}{f.name}"
            out.append((name, hints[f.name]))
            out += sections(hints[f.name], f"{name}.")
    return out


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def keys() -> dict[str, tuple[str, object, str]]:
    """{section.key: (type, default, meaning)} of every leaf key."""
    out = {}
    for name, cls in sections():
        hints = typing.get_type_hints(cls, include_extras=True)
        docs = field_comments(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name]):
                continue
            out[f"{name}.{f.name}"] = (type_words(hints[f.name]), _default(f), docs.get(f.name, ""))
    return out


def help_listing(width: int = 100) -> str:
    """Every section and key: `  key  type = default  meaning`."""
    lines = []
    current = None
    for dotted, (kind, default, meaning) in keys().items():
        section, key = dotted.rsplit(".", 1)
        if section != current:
            lines.append(f"\n{section}:")
            current = section
        value = yaml.safe_dump(default, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
        lines.append(f"  {key} ({kind}) = {value}")
        if meaning:
            lines.append(f"      {meaning}")
    return "\n".join(lines).lstrip("\n")


def dotted_overrides(argv: list[str], own: tuple[str, ...] = ()) -> list[str]:
    """`--section.key value` and `--section.key=value` as `section.key=value`; the command's `own`
    flags and everything else as given. An unknown flag, or one without its value, is one
    ConfigError with the nearest keys."""
    known = keys()
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--" or arg in own:
            out.append(arg)
            i += 1
            continue
        flag, sep, value = arg[2:].partition("=")
        if flag not in known:
            close = difflib.get_close_matches(flag, list(known), n=3, cutoff=0.6)
            hint = f"; did you mean --{' or --'.join(close)}?" if close else ""
            raise ConfigError(f"unknown option {short(arg)}{hint} (options are --section.key value, e.g. "
                              "--train.lr 1e-3; bdh-train --help lists every key)")
        if not sep:
            following = argv[i + 1] if i + 1 < len(argv) else None
            if following is None or following.startswith("--") or following.partition("=")[0] in known:
                raise ConfigError(f"option --{flag} needs a value, e.g. --{flag} {yaml.safe_dump(known[flag][1]).split()[0]}")
            value = argv[i + 1]
            i += 1
        out.append(f"{flag}={value}")
        i += 1
    return out


def resolved_yaml(cfg: RunConfig) -> str:
    """The config as a recipe: every key, loadable back with load_config."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
