"""Why prepare's peak RSS grows with N: the staging pass alone, streamed whole or in row chunks.

    python -m bench.memory_repro full 2200000          # render + encode + sink_parquet, as prepare stages
    python -m bench.memory_repro full_chunked 2200000  # the same in 250k-row slices (the suggested fix)
    python -m bench.memory_repro raw 2200000           # scan -> sink with no expression (flat)

Prints the wall time and the process's peak RSS. Needs bench/data/simplecot-N.parquet (bench.datagen).
"""

from __future__ import annotations

import sys
import time

import polars as pl

from bench import datagen
from bench.common import peak_rss_mb
from tasks.core import prepare as P
from tasks.core.formats import InferenceSettings, request_line_expr, resolve_family
from tasks.core.sources import SourceSpec, load_source
from tasks.core.templates import load_template, render_prompts

CHUNK = 250_000


def main() -> None:
    variant, n = sys.argv[1], int(sys.argv[2])
    data = str(datagen.ensure("simplecot", n))
    template = load_template(prompt_id="question_answering")
    family = resolve_family("anthropic.claude-3-haiku-20240307-v1:0")
    settings = InferenceSettings(max_tokens=1024, system=template.system)
    source = load_source(SourceSpec(input_path=data))
    columns = source.collect_schema().names()
    rendered = render_prompts(source, template, prompt_column=P._PROMPT, error_column=P._ERROR)
    staged = rendered.with_columns(request_line_expr(family, settings, prompt=P._PROMPT).alias(P._LINE)).select(
        *columns, P._LINE
    )
    options = {"compression": "lz4", "row_group_size": 20_000}
    start = time.perf_counter()
    if variant == "raw":
        pl.scan_parquet(data).sink_parquet("/tmp/memory-repro.parquet", **options)
    elif variant == "full":
        staged.sink_parquet("/tmp/memory-repro.parquet", **options)
    elif variant == "full_chunked":
        parts = []
        for i, offset in enumerate(range(0, n, CHUNK)):
            parts.append(f"/tmp/memory-repro-{i:04d}.parquet")
            staged.slice(offset, CHUNK).sink_parquet(parts[-1], **options)
        ids = pl.scan_parquet(parts).select("record_id").collect().get_column("record_id")
        assert ids.n_unique() == n and ids[0] == "r0000000000" and ids[-1] == f"r{n - 1:010d}"
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    peak = peak_rss_mb()
    print(f"{variant} {n:,} rows: {time.perf_counter() - start:.1f} s, peak RSS {peak:,.0f} MB")


if __name__ == "__main__":
    main()
