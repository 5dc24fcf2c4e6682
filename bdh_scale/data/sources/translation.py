"""Translation pairs as language-model text.

A pair (source sentence, target sentence) becomes two lines, each wrapped in a tag naming its
language in upper case:

    <FR:Reprise de la session>
    <EN:Resumption of the session>

so a model trained on the stream learns to continue "<FR:...>\\n<EN:" with the translation.
Newlines inside a sentence become spaces (one pair = exactly two lines) and pairs where either
side is empty after stripping are skipped (the Europarl release keeps empty lines for
alignment). data_prep.europarl writes this format; the bundled source "europarl_en_fr" and
hub rows with a translation dict (data.translation) are rendered with the same function.
"""

from __future__ import annotations

from typing import Iterable, Iterator


def format_pair(src_lang: str, src: str, tgt_lang: str, tgt: str) -> str | None:
    """"<SRC:src>\\n<TGT:tgt>\\n", or None when either side is empty."""
    src = " ".join(src.split())
    tgt = " ".join(tgt.split())
    if not src or not tgt:
        return None
    return f"<{src_lang.upper()}:{src}>\n<{tgt_lang.upper()}:{tgt}>\n"


def format_pairs(src_lang: str, tgt_lang: str,
                 pairs: Iterable[tuple[str, str]]) -> Iterator[str]:
    """The formatted text of every pair with both sides non-empty, in order."""
    for src, tgt in pairs:
        text = format_pair(src_lang, src or "", tgt_lang, tgt or "")
        if text is not None:
            yield text


def format_translation_rows(rows: list, langs) -> list[str]:
    """Rows of a datasets Translation feature ({"en": ..., "fr": ...}) as pair text."""
    src_lang, tgt_lang = langs
    pairs = []
    for row in rows:
        if not isinstance(row, dict) or src_lang not in row or tgt_lang not in row:
            have = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise KeyError(f"a translation row lacks '{src_lang}' or '{tgt_lang}' (has {have})")
        pairs.append((row[src_lang], row[tgt_lang]))
    return list(format_pairs(src_lang, tgt_lang, pairs))
