"""data.sources: a weighted mixture of corpora, as a recipe gives it, checked when the section is built.

    data:
      sources:
        - {source: europarl_en, weight: 0.7}
        - {source: corpus/web/*.jsonl, weight: 0.3, text_column: body, name: web}

An entry names its corpus as data.source would (a bundled name, local or remote files, a shard dir, a
Hub dataset) and may set the keys of PER_SOURCE: how that corpus is read (its column, Hub config and
split, translation pair, load_dataset arguments, separator, token cap) and how it is held out (its
val_fraction, val_split, val_tokens). Every other key of `data:` belongs to the run and holds for all
sources alike: one tokenizer, one kind of lanes, one policy for bad records, one doc_reset.

`weight`: relative, normalized to sum to 1: the chance that the next document of the training stream
comes from that source (a piece of running text counts as one document), as the probabilities of
datasets.interleave_datasets are. A source of long documents thus gets more than its weight of the
tokens; the stretch lanes say each source's share of tokens when they start (mixstretch.py).

`name` (default: from the source, e.g. "europarl_en", "web" for corpus/web/*.jsonl) names the source
in the metrics (val_loss/<name>, val_bpb/<name>) and in the run directory (held_out/<name>).

How the sources are mixed: mixstretch.py (stretch lanes) and mixstream.py (stream lanes).
"""

from __future__ import annotations

import difflib
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from bdh_scale.data.sources.names import BUILDERS
from bdh_scale.errors import ConfigError, DataError
from bdh_scale.utils.quote import short

# the DataConfig fields an entry may set for its own source; the rest of data: is the run's
PER_SOURCE = ("text_column", "hub_config", "hub_split", "translation", "load_kwargs", "doc_separator",
              "max_tokens", "val_fraction", "val_split", "val_tokens")
ENTRY = ("source", "weight", "name")
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
EXAMPLE = "[{source: europarl_en, weight: 0.7}, {source: europarl_fr, weight: 0.3}]"


@dataclass(frozen=True)
class Part:
    """One source of a mixture."""

    name: str
    weight: float  # normalized: the weights of a mixture sum to 1
    cfg: object    # DataConfig: the run's data section reading this source alone (its per-source keys set)
    key: str       # where the recipe gives it, for messages: "data.sources[1]"


def check_mixture(cfg) -> None:
    """ConfigError (one line) unless data.sources is a mixture parts() can read, without data.source."""
    if cfg.source is not None:
        raise ConfigError(f"data.sources: given with data.source={short(cfg.source)}; a run reads one corpus "
                          "(data.source) or a mixture (data.sources), not both: remove one (or set it to null)")
    parts(cfg)


def parts(cfg) -> list[Part]:
    """The sources of cfg.sources, each with its own DataConfig; ConfigError naming the entry at fault."""
    entries = cfg.sources
    if not entries:
        raise ConfigError(f"data.sources: an empty list; give one entry per corpus, e.g. {EXAMPLE}, or use data.source")
    found, names = [], {}
    for i, entry in enumerate(entries):
        key = f"data.sources[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}: expected a mapping such as {{source: europarl_fr, weight: 0.3}}, "
                              f"got {short(entry)}")
        for k in entry:
            if k not in ENTRY + PER_SOURCE:
                close = difflib.get_close_matches(str(k), ENTRY + PER_SOURCE, n=2, cutoff=0.5)
                hint = f"did you mean {' or '.join(close)}? " if close else ""
                raise ConfigError(f"{key}: unknown key {short(k)}; {hint}(an entry takes {', '.join(ENTRY)} and the "
                                  f"per-source keys {', '.join(PER_SOURCE)}; the other data keys are the run's)")
        source = entry.get("source")
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"{key}.source: {'missing' if source is None else short(source)}; name the corpus as "
                              "data.source would, e.g. {source: europarl_fr, weight: 0.3}")
        weight = entry.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"{key}.weight: {'missing' if weight is None else f'{short(weight)} is not > 0'}; give "
                              "every source a positive weight (relative: [7, 3] mixes as [0.7, 0.3])")
        name = entry.get("name", default_name(source))
        if not isinstance(name, str) or not NAME.fullmatch(name) or name in (".", ".."):
            raise ConfigError(f"{key}.name: {short(name)} is not a plain name; use letters, digits, '-', '_' or '.' "
                              "(at most 64): it names val_loss/<name> and held_out/<name>")
        if name in names:
            raise ConfigError(f"{key}.name: '{name}' names {names[name]} too; give each source its own name "
                              f"(e.g. name: {name}_2)")
        names[name] = key
        own = {k: v for k, v in entry.items() if k in PER_SOURCE}
        try:
            part_cfg = replace(cfg, source=source, sources=None, **own)
        except ConfigError as e:  # "data.text_column: ..." of this entry
            raise ConfigError(re.sub(r"^data\.", f"{key}.", str(e))) from None
        found.append((name, float(weight), part_cfg, key))
    total = sum(w for _, w, _, _ in found)
    return [Part(name, w / total, c, key) for name, w, c, key in found]


def default_name(source: str) -> str:
    """The name a source goes by unless its entry names it: a bundled or Hub name's last part, a file's
    stem, a directory's (or a glob's directory's) name."""
    segments = [s for s in re.split(r"[/\\]", source.rstrip("/\\")) if s and s not in (".", "..", "~")]
    while len(segments) > 1 and any(c in segments[-1] for c in "*?["):
        segments.pop()
    last = segments[-1] if segments else "source"
    if Path(last).suffix.lower() in BUILDERS:
        last = Path(last).stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", last).strip("._")[:64]
    return name or "source"


@contextmanager
def named(p: Part):
    """A DataError of reading one source, said of its entry: "data.text_column: ..." becomes
    "data.sources[1].text_column: ..." where the key is the entry's own (not for the run's keys)."""
    try:
        yield
    except DataError as e:
        key = re.match(r"data\.(\w+)", str(e))
        if key is None or key.group(1) not in PER_SOURCE + ("source",):
            raise
        raise DataError(f"{p.key}{str(e)[4:]}") from None


def describe(mixed: list[Part], shares: list[float] | None = None) -> str:
    """'mixture of europarl_en (0.70), europarl_fr (0.30)', with each source's share of tokens if known."""
    def one(i: int, p: Part) -> str:
        share = f", {shares[i]:.0%} of tokens" if shares is not None else ""
        return f"{p.name} ({p.weight:.2f}{share})"
    return "mixture of " + ", ".join(one(i, p) for i, p in enumerate(mixed))

