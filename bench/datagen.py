"""Synthetic data shaped like the seed's data sets, generated vectorised (numpy + Polars), deterministic.

SimpleCoT rows have a `source` (an instruction with context, sometimes long) and a `target` (a short
chain-of-thought answer). The length mix imitates the real set: most sources are a few hundred
characters, a long tail reaches several thousand. Lengths are drawn from a log-normal (median ~420
chars, ~5% over 2,000, capped at 12,000), sources are made of words from a fixed vocabulary.

    python -m bench.datagen simplecot --rows 2200000 --out bench/data/simplecot.parquet
    python -m bench.datagen embeddings --rows 200000 --out bench/data/texts.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no what can out other more will "
    "question answer reason step first then therefore because number total each given find how many much "
    "cost price apples train speed distance hours minutes percent average ratio sum difference product "
    "explain why which option correct statement premise hypothesis entail contradict neutral sentence "
    "passage context according author claim evidence infer conclude assume true false value equal"
).split()

_OPENERS = [
    "Answer the following question step by step.",
    "Premise and hypothesis follow; does the premise entail the hypothesis?",
    "Read the passage and answer the question.",
    "Solve the problem and explain your reasoning.",
    "Choose the correct option and justify it.",
]


def _texts(rng: np.random.Generator, lengths: np.ndarray, words: list[str]) -> pl.Series:
    """Random word sequences of roughly the given character lengths, built without a per-row loop."""
    vocab = np.array(words)
    avg = float(np.mean([len(w) + 1 for w in words]))
    counts = np.maximum(1, (lengths / avg).astype(np.int64))
    flat = vocab[rng.integers(0, len(vocab), int(counts.sum()))]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    lists = pl.Series("w", flat, dtype=pl.String).to_frame().with_columns(
        row=pl.Series(np.repeat(np.arange(len(counts)), counts))
    )
    joined = lists.group_by("row", maintain_order=True).agg(pl.col("w").str.join(" "))
    assert joined.height == len(offsets) - 1
    return joined["w"]


def simplecot_frame(rows: int, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.lognormal(mean=np.log(420), sigma=0.85, size=rows), 12_000).astype(np.int64)
    body = _texts(rng, lengths, _WORDS)
    opener = pl.Series(np.array(_OPENERS)[rng.integers(0, len(_OPENERS), rows)])
    target_len = np.minimum(rng.lognormal(mean=np.log(160), sigma=0.6, size=rows), 2_000).astype(np.int64)
    target = _texts(rng, target_len, _WORDS)
    return pl.DataFrame({"source": opener + "\n" + body, "target": "Let's think step by step. " + target})


def embeddings_frame(rows: int, seed: int = 11) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.lognormal(mean=np.log(300), sigma=0.7, size=rows), 8_000).astype(np.int64)
    return pl.DataFrame({"input_text": _texts(rng, lengths, _WORDS)})


def topics_frame() -> pl.DataFrame:
    topics = ["cats", "databases", "the moon", "coffee", "trains", "penguins", "spreadsheets", "cloud computing",
              "gardening", "jazz", "volcanoes", "bicycles", "libraries", "pirates", "robots", "tea",
              "mathematicians", "umbrellas", "octopuses", "deadlines"]
    # 120 rows: above Bedrock's 100-record job minimum, so the sample runs as a real batch job.
    return pl.DataFrame({"topic": [f"{t}" for _ in range(6) for t in topics]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["simplecot", "embeddings"])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    frame = simplecot_frame(args.rows, args.seed) if args.kind == "simplecot" else embeddings_frame(args.rows, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(args.out)
    print(f"{args.out}: {frame.height:,} rows, {args.out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
