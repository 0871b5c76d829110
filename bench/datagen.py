"""Synthetic data shaped like the seed's data sets, generated vectorised (numpy + Arrow), deterministic.

SimpleCoT rows have a `source` (an instruction with context, sometimes long) and a `target` (a short
chain-of-thought answer). The length mix imitates the real set:

| column | distribution (characters, ASCII so = bytes) | median | mean | p95 | max |
|---|---|---|---|---|---|
| `source` | opener (41-70 chars) + "\\n" + lognormal(ln 420, 0.85), capped at 12,000 | ~470 | ~640 | ~1,700 | 12,000 |
| `target` | "Let's think step by step. " + lognormal(ln 160, 0.6), capped at 2,000 | ~185 | ~215 | ~470 | 2,000 |
| `input_text` (embeddings) | lognormal(ln 300, 0.7), capped at 8,000 | ~300 | ~385 | ~950 | 8,000 |

About 5% of sources are over 1,700 characters and 0.3% over 5,000 (the long tail of passages that
dominates byte-bounded shard sizes). Texts are windows of a 17 MB corpus of random words from a fixed
vocabulary, cut at word starts: each row is a zero-copy Arrow string view into the corpus, so 2.2M rows
take ~3 s to generate (the Parquet write dominates).

    python -m bench.datagen simplecot --rows 2200000 --out bench/data/simplecot-2200000.parquet
    python -m bench.datagen embeddings --rows 50000 --out bench/data/texts-50000.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

DATA_DIR = Path(__file__).resolve().parent / "data"

_VOCABULARY = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no what can out other more will "
    "question answer reason step first then therefore because number total each given find how many much "
    "cost price apples train speed distance hours minutes percent average ratio sum difference product "
    "explain why which option correct statement premise hypothesis entail contradict neutral sentence "
    "passage context according author claim evidence infer conclude assume true false value equal"
)
_WORDS = _VOCABULARY.split()

_OPENERS = [
    "Answer the following question step by step.",
    "Premise and hypothesis follow; does the premise entail the hypothesis?",
    "Read the passage and answer the question.",
    "Solve the problem and explain your reasoning.",
    "Choose the correct option and justify it.",
]
_CORPUS_WORDS = 3_000_000
_MAX_LEN = 12_000


class _Corpus:
    """A long text of random words and the offsets where its words start."""

    def __init__(self, rng: np.random.Generator) -> None:
        vocab = np.array(_WORDS)
        words = vocab[rng.integers(0, len(vocab), _CORPUS_WORDS)]
        self.data = " ".join(words.tolist()).encode()
        widths = np.char.str_len(words) + 1
        starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
        self.starts = starts[starts < len(self.data) - _MAX_LEN - 1].astype(np.int32)
        self.bytes = np.frombuffer(self.data, dtype=np.uint8)

    def texts(self, rng: np.random.Generator, lengths: np.ndarray) -> pl.Series:
        """Windows of the corpus of the given lengths (>= 13, <= 12,000), as one Utf8 Series."""
        n = len(lengths)
        lengths = np.clip(lengths, 13, _MAX_LEN).astype(np.int32)
        offsets = self.starts[rng.integers(0, len(self.starts), n)]
        views = np.zeros(n, dtype=[("len", "<i4"), ("prefix", "V4"), ("buf", "<i4"), ("off", "<i4")])
        views["len"], views["off"] = lengths, offsets
        views["prefix"] = np.stack([self.bytes[offsets + i] for i in range(4)], axis=1).copy().view("V4")[:, 0]
        array = pa.Array.from_buffers(
            pa.string_view(), n, [None, pa.py_buffer(views.tobytes()), pa.py_buffer(self.data)]
        )
        # Own the bytes (a contiguous copy): writers slow down badly on views into one shared buffer.
        return pl.Series(pl.from_arrow(array.cast(pa.large_string())))


def simplecot_frame(rows: int, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    corpus = _Corpus(rng)
    lengths = np.minimum(rng.lognormal(mean=np.log(420), sigma=0.85, size=rows), 12_000).astype(np.int64)
    body = corpus.texts(rng, lengths)
    opener = pl.Series(np.array(_OPENERS)[rng.integers(0, len(_OPENERS), rows)])
    target_len = np.minimum(rng.lognormal(mean=np.log(160), sigma=0.6, size=rows), 2_000).astype(np.int64)
    target = corpus.texts(rng, target_len)
    return pl.DataFrame({"source": opener + "\n" + body, "target": "Let's think step by step. " + target})


def embeddings_frame(rows: int, seed: int = 11) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    corpus = _Corpus(rng)
    lengths = np.minimum(rng.lognormal(mean=np.log(300), sigma=0.7, size=rows), 8_000).astype(np.int64)
    return pl.DataFrame({"input_text": corpus.texts(rng, lengths)})


def topics_frame() -> pl.DataFrame:
    topics = ["cats", "databases", "the moon", "coffee", "trains", "penguins", "spreadsheets", "cloud computing",
              "gardening", "jazz", "volcanoes", "bicycles", "libraries", "pirates", "robots", "tea",
              "mathematicians", "umbrellas", "octopuses", "deadlines"]
    # 120 rows: above Bedrock's 100-record job minimum, so the sample runs as a real batch job.
    return pl.DataFrame({"topic": [f"{t}" for _ in range(6) for t in topics]})


def write(frame: pl.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    # lz4: the benchmark reads this file in every stage and its floor; favour read speed.
    frame.write_parquet(tmp, compression="lz4", statistics=False, row_group_size=100_000)
    tmp.replace(out)


def ensure(kind: str, rows: int, seed: int | None = None) -> Path:
    """The cached data file for (kind, rows), generated on first use under bench/data/."""
    out = DATA_DIR / f"{kind}-{rows}.parquet"
    if not out.exists():
        if kind == "simplecot":
            frame = simplecot_frame(rows, 7 if seed is None else seed)
        else:
            frame = embeddings_frame(rows, 11 if seed is None else seed)
        write(frame, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["simplecot", "embeddings"])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.out is None:
        out = ensure(args.kind, args.rows, args.seed)
    else:
        make = simplecot_frame if args.kind == "simplecot" else embeddings_frame
        frame = make(args.rows) if args.seed is None else make(args.rows, args.seed)
        write(frame, args.out)
        out = args.out
    print(f"{out}: {pl.scan_parquet(out).select(pl.len()).collect().item():,} rows, {out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
