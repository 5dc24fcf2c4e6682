"""Build translation-style LM text from a line-aligned parallel corpus (Europarl layout).

    python -m data_prep.europarl --src fr.txt --tgt en.txt --out europarl_fr_en.txt

Line i of --src translates line i of --tgt. Each pair becomes two lines,

    <FR:Reprise de la session>
    <EN:Resumption of the session>

(tags = the language codes in upper case, source first; whitespace inside a sentence collapsed
to single spaces), so a model learns to continue "<FR:...>\\n<EN:" with the translation. Pairs
where either side is empty are skipped (the Europarl release keeps empty lines to stay
aligned). The format is defined in bdh_scale/data/sources/translation.py; the bundled source
"europarl_en_fr" is this command's output for the bundled sample, built on the fly. Train on
the output with `data.source: <out>` (it is a plain .txt file).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tqdm import tqdm

from bdh_scale.data.sources.names import BUNDLED_DIR
from bdh_scale.data.sources.reader import parallel_text
from data_prep._cli import fail, run

SAMPLE = BUNDLED_DIR / "europarl" / "fr-en"


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m data_prep.europarl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=str(SAMPLE / "fr.txt"),
                   help="source-language file, one sentence per line (default: bundled fr)")
    p.add_argument("--tgt", default=str(SAMPLE / "en.txt"),
                   help="target-language file, line-aligned with --src (default: bundled en)")
    p.add_argument("--src-lang", default="fr", help="source language code (tag <FR:...>)")
    p.add_argument("--tgt-lang", default="en", help="target language code (tag <EN:...>)")
    p.add_argument("--out", required=True, help="output .txt file")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    for lang in (args.src_lang, args.tgt_lang):
        if not lang or not lang.isalnum():
            fail(f"language code {lang!r} must be letters/digits, e.g. fr")
    if args.src_lang.lower() == args.tgt_lang.lower():
        fail(f"--src-lang and --tgt-lang are both {args.src_lang!r}; give two languages")
    if os.path.abspath(args.out) in (os.path.abspath(args.src), os.path.abspath(args.tgt)):
        fail(f"--out: '{args.out}' would overwrite an input file")
    counts: dict = {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f, tqdm(unit=" pairs", desc="pairs") as bar:
        for texts in parallel_text(args.src, args.tgt, (args.src_lang, args.tgt_lang), counts):
            f.writelines(texts)
            bar.update(len(texts))
    if not counts.get("pairs"):
        out.unlink(missing_ok=True)
        fail(f"no non-empty pairs in '{args.src}' / '{args.tgt}'; nothing written")
    skipped = counts["lines"] - counts["pairs"]
    print(f"wrote {counts['pairs']:,} pairs to {out} (skipped {skipped:,} of "
          f"{counts['lines']:,} lines with an empty side)")
    return counts


if __name__ == "__main__":
    run(main)
