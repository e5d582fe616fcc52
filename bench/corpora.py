"""Real English corpora for benchmarks, built offline from the data gensim ships with its tests."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"


def gensim_data(name: str) -> Path:
    from gensim.test.utils import datapath

    return Path(datapath(name))


def wiki_sample(out: Path | None = None) -> Path:
    """The Wikipedia sample shipped with gensim (~0.7 M words), one article per line.

    Extracted once with gensim's `WikiCorpus` tokeniser (lower-cased, markup stripped) and
    cached under bench/data/.
    """
    from gensim.corpora.wikicorpus import WikiCorpus

    out = out or DATA_DIR / "enwiki-sample.txt"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    src = gensim_data("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    wiki = WikiCorpus(str(src), dictionary={}, processes=1)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for tokens in wiki.get_texts():
            fh.write(" ".join(tokens) + "\n")
    os.replace(tmp, out)
    return out


def repeated(src: Path, min_words: int, out: Path | None = None) -> Path:
    """`src` concatenated with itself until it holds at least `min_words` words."""
    out = out or DATA_DIR / f"{src.stem}-{min_words // 1000}k-words.txt"
    if out.exists():
        return out
    text = src.read_text(encoding="utf-8")
    words = len(text.split())
    copies = -(-min_words // words)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for _ in range(copies):
            fh.write(text)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat-to", type=int, default=0, help="also write a copy of at least this many words")
    args = parser.parse_args()
    path = wiki_sample()
    print(path)
    if args.repeat_to:
        print(repeated(path, args.repeat_to))
