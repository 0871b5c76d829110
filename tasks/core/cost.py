"""What a batch run will cost and how long it will take, before anything is submitted; what it cost after.

Prices come from `deployments/prices.json` (on-demand USD per 1k tokens; batch = `batch_discount` x
on-demand). The estimate is plain arithmetic over figures computed elsewhere (the input-token estimate
is ceil(utf8 bytes / 4) per record, summed by the data plane), so it is a pure function, unit-tested,
and cheap enough to print before every run and to gate it with a budget.

Time forecast assumptions (all overridable through `DurationModel`): a job holds its quota slot from
submit to terminal state; it first waits `queue_minutes`, then processes its records at
`records_per_minute` (and, if given, no faster than `output_tokens_per_minute` allows); the flow
refills a freed slot within `refill_lag_minutes` (its poll interval). With equal shards the run is
ceil(shards / slots) waves of one job duration each.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from tasks.core.model_ids import parse_model_id

PRICES_PATH = Path(__file__).resolve().parents[2] / "deployments" / "prices.json"

# Generations usually stop well before max_tokens; half the bound is a planning figure, not a fact.
# Calibrate it from a finished run with `observed_output_ratio(manifests, records, max_tokens)`.
DEFAULT_EXPECTED_OUTPUT_RATIO = 0.5


class UnknownModelPrice(LookupError):
    """No row of the price table matches the model: pass `price=` or a table that has it."""


class BudgetExceeded(ValueError):
    """The run would cost more than the budget allows; raised before any job is submitted."""


@dataclass(frozen=True)
class Price:
    """On-demand prices of one model (already adjusted for regional vs. global endpoints)."""

    name: str
    pattern: str
    input_per_1k: float
    output_per_1k: float
    batch_discount: float = 0.5
    regional_multiplier: float = 1.0  # what was applied to the table's figures

    @property
    def batch_input_per_1k(self) -> float:
        return self.input_per_1k * self.batch_discount

    @property
    def batch_output_per_1k(self) -> float:
        return self.output_per_1k * self.batch_discount


@dataclass(frozen=True)
class PriceTable:
    source: str
    as_of: str
    batch_discount: float
    entries: tuple[dict[str, Any], ...]


@lru_cache(maxsize=8)
def load_prices(path: Path | str | None = None) -> PriceTable:
    """Read a price table (default: deployments/prices.json)."""
    raw = json.loads(Path(path or PRICES_PATH).read_text())
    return PriceTable(
        source=raw.get("source", ""),
        as_of=raw.get("as_of", ""),
        batch_discount=float(raw.get("batch_discount", 0.5)),
        entries=tuple(raw["models"]),
    )


def normalize_model_id(model_id: str) -> tuple[str, bool]:
    """(`provider.model...` id, whether it goes through a global profile) from an id, profile id or ARN.

    `arn:aws:bedrock:us-east-1:123:inference-profile/us.anthropic.claude-...` -> `anthropic.claude-...`.
    The same reading of ids as the model families' (`tasks.core.model_ids.parse_model_id`).
    """
    ref = parse_model_id(model_id)
    return ref.base, ref.is_global


def lookup_price(model_id: str, table: PriceTable | None = None) -> Price:
    """The price row for a model id, inference-profile id (`us.`/`eu.`/`global.`...) or ARN."""
    table = table or load_prices()
    bare, is_global = normalize_model_id(model_id)
    for entry in table.entries:
        if fnmatch.fnmatchcase(bare, entry["pattern"].lower()):
            multiplier = 1.0 if is_global else float(entry.get("regional_multiplier", 1.0))
            return Price(
                name=entry["name"],
                pattern=entry["pattern"],
                input_per_1k=float(entry["input_per_1k"]) * multiplier,
                output_per_1k=float(entry["output_per_1k"]) * multiplier,
                batch_discount=float(entry.get("batch_discount", table.batch_discount)),
                regional_multiplier=multiplier,
            )
    hint = (
        " (application inference profiles hide the model: pass price=)" if "application" in model_id else ""
    )
    raise UnknownModelPrice(f"no price for model {model_id!r} in the price table (as of {table.as_of}){hint}")


def usd(tokens: float, per_1k: float) -> float:
    return tokens / 1000.0 * per_1k


# --- estimate ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DurationModel:
    """How long one job holds its slot. Rough defaults: calibrate with a run's CloudWatch throughput."""

    queue_minutes: float = 30.0
    records_per_minute: float = 400.0
    output_tokens_per_minute: float | None = None
    refill_lag_minutes: float = 1.0

    def job_minutes(self, records: int, output_tokens: float) -> float:
        processing = records / self.records_per_minute
        if self.output_tokens_per_minute:
            processing = max(processing, output_tokens / self.output_tokens_per_minute)
        return self.queue_minutes + processing


@dataclass(frozen=True)
class Estimate:
    model_id: str
    price: Price
    total_records: int
    n_shards: int
    slots: int
    waves: int
    records_per_shard: int  # the largest shard (shards differ by at most one record)
    input_tokens: int
    max_output_tokens: int  # per record
    output_tokens_bound: int
    output_tokens_expected: int
    expected_output_ratio: float
    job_minutes: float
    makespan_minutes: float
    warnings: tuple[str, ...] = field(default=())

    @property
    def input_cost_usd(self) -> float:
        return usd(self.input_tokens, self.price.batch_input_per_1k)

    @property
    def cost_bound_usd(self) -> float:
        """The most the run can cost at batch prices: every record writes max_tokens."""
        return self.input_cost_usd + usd(self.output_tokens_bound, self.price.batch_output_per_1k)

    @property
    def cost_expected_usd(self) -> float:
        return self.input_cost_usd + usd(self.output_tokens_expected, self.price.batch_output_per_1k)

    @property
    def on_demand_expected_usd(self) -> float:
        """The same expected work through on-demand calls, for comparison."""
        return usd(self.input_tokens, self.price.input_per_1k) + usd(
            self.output_tokens_expected, self.price.output_per_1k
        )


def schema_input_tokens(family: Any) -> int:
    """Input tokens a structured family's `output_schema` adds to each request: the forced tool's
    definition (Claude, Nova, Converse) or the instructions appended to the prompt (Llama, Mistral), at
    ceil(UTF-8 bytes / 4) like the rest of the estimate. 0 for a family without a schema.

    Tool use also has the model's own tool-use system prompt (hundreds of tokens on Claude, per request),
    which no byte count sees: `tool_overhead_tokens` in `estimate` is where to add it when known.
    """
    schema = getattr(family, "schema", None)
    if schema is None:
        return 0
    from tasks.core.families import spec_of

    return math.ceil(schema.added_bytes(tools=spec_of(family).uses_tools) / 4)


def estimate(
    total_records: int,
    input_tokens: int,
    max_output_tokens: int,
    model_id: str,
    n_shards: int,
    slots: int,
    *,
    min_records_per_job: int = 100,
    max_records_per_job: int = 50_000,
    job_timeout_hours: float = 24,
    expected_output_ratio: float = DEFAULT_EXPECTED_OUTPUT_RATIO,
    duration: DurationModel | None = None,
    price: Price | None = None,
    prices: PriceTable | None = None,
    family: Any = None,
    tool_overhead_tokens: int = 0,
) -> Estimate:
    """Cost bound, expected cost and makespan of `total_records` in `n_shards` jobs over `slots` slots.

    `input_tokens` is the run's total input-token estimate (of the rendered prompts); `max_output_tokens`
    the per-record cap (0 for embeddings). Output bound = records x cap; expected = bound x
    `expected_output_ratio`. With a structured `family` (`ModelFamily.output_schema`), each record also
    counts what the schema adds to its request (`schema_input_tokens`, plus `tool_overhead_tokens` when the
    family forces it through tool use). Quota figures only produce warnings: planning shards is
    `tasks.core.plan`'s job.
    """
    per_record = schema_input_tokens(family)
    if per_record:
        from tasks.core.families import spec_of

        per_record += tool_overhead_tokens if spec_of(family).uses_tools else 0
        input_tokens += per_record * total_records
    if total_records < 0 or input_tokens < 0 or max_output_tokens < 0:
        raise ValueError("records and token counts must be >= 0")
    if slots < 1 or n_shards < (1 if total_records else 0):
        raise ValueError(f"need slots >= 1 and at least one shard per run (got {slots=}, {n_shards=})")
    if not 0 <= expected_output_ratio <= 1:
        raise ValueError(f"expected_output_ratio must be within [0, 1], got {expected_output_ratio}")
    duration = duration or DurationModel()
    price = price or lookup_price(model_id, prices)

    bound = total_records * max_output_tokens
    expected = math.ceil(bound * expected_output_ratio)
    largest = math.ceil(total_records / n_shards) if n_shards else 0
    smallest = total_records // n_shards if n_shards else 0
    waves = math.ceil(n_shards / slots)
    job = duration.job_minutes(largest, expected / max(n_shards, 1)) if n_shards else 0.0
    makespan = waves * job + max(waves - 1, 0) * duration.refill_lag_minutes

    warnings: list[str] = []
    if largest > max_records_per_job:
        warnings.append(f"shards of {largest:,} records exceed the {max_records_per_job:,} per-job maximum")
    if n_shards and smallest < min_records_per_job:
        warnings.append(
            f"shards of {smallest:,} records are below the {min_records_per_job:,} per-job minimum"
        )
    if job > job_timeout_hours * 60:
        warnings.append(
            f"a job is forecast to take {_duration(job)}, beyond its {job_timeout_hours:g} h timeout: "
            "it would end PartiallyCompleted or Expired"
        )
    if n_shards and n_shards % slots and waves > 1:
        warnings.append(f"the last wave fills {n_shards % slots} of {slots} slots")
    elif 0 < n_shards < slots:
        shards = "1 shard uses" if n_shards == 1 else f"{n_shards} shards use"
        warnings.append(f"{shards} {n_shards} of {slots} slots")

    return Estimate(
        model_id=model_id,
        price=price,
        total_records=total_records,
        n_shards=n_shards,
        slots=slots,
        waves=waves,
        records_per_shard=largest,
        input_tokens=input_tokens,
        max_output_tokens=max_output_tokens,
        output_tokens_bound=bound,
        output_tokens_expected=expected,
        expected_output_ratio=expected_output_ratio,
        job_minutes=job,
        makespan_minutes=makespan,
        warnings=tuple(warnings),
    )


def check_budget(
    estimate: Estimate, budget_usd: float | None, *, basis: Literal["bound", "expected"] = "bound"
) -> None:
    """Raise `BudgetExceeded` when the run could cost more than `budget_usd` (None = no budget).

    The default basis is the bound (every record writes max_tokens): a budget is a promise that the
    run cannot cost more, and the expected figure rests on an assumed ratio.
    """
    if budget_usd is None:
        return
    cost = estimate.cost_bound_usd if basis == "bound" else estimate.cost_expected_usd
    if cost > budget_usd:
        raise BudgetExceeded(
            f"{estimate.model_id}: {basis} cost {_money(cost)} exceeds the budget of {_money(budget_usd)} "
            f"({estimate.total_records:,} records, {estimate.input_tokens:,} input tokens, "
            f"max_tokens {estimate.max_output_tokens:,}); lower max_tokens, sample the input, "
            "or raise the budget"
        )


# --- actual cost ------------------------------------------------------------------------------------

_MANIFEST_COUNTS = (
    "totalRecordCount",
    "processedRecordCount",
    "successRecordCount",
    "errorRecordCount",
    "inputTokenCount",
    "outputTokenCount",
)


@dataclass(frozen=True)
class Cost:
    """What finished jobs used and cost, summed over their Bedrock manifests."""

    model_id: str
    price: Price
    jobs: int
    total_records: int
    processed_records: int
    success_records: int
    error_records: int
    input_tokens: int
    output_tokens: int

    @property
    def batch_usd(self) -> float:
        return usd(self.input_tokens, self.price.batch_input_per_1k) + usd(
            self.output_tokens, self.price.batch_output_per_1k
        )

    @property
    def on_demand_usd(self) -> float:
        return usd(self.input_tokens, self.price.input_per_1k) + usd(
            self.output_tokens, self.price.output_per_1k
        )


def actual_cost(
    manifests: Sequence[dict[str, Any]],
    model_id: str,
    *,
    price: Price | None = None,
    prices: PriceTable | None = None,
) -> Cost:
    """Sum `manifest.json.out` counts (missing counts are 0: a failed job may have none)."""
    totals = dict.fromkeys(_MANIFEST_COUNTS, 0)
    for manifest in manifests:
        for key in _MANIFEST_COUNTS:
            totals[key] += int(manifest.get(key) or 0)
    return Cost(
        model_id=model_id,
        price=price or lookup_price(model_id, prices),
        jobs=len(manifests),
        total_records=totals["totalRecordCount"],
        processed_records=totals["processedRecordCount"],
        success_records=totals["successRecordCount"],
        error_records=totals["errorRecordCount"],
        input_tokens=totals["inputTokenCount"],
        output_tokens=totals["outputTokenCount"],
    )


def observed_output_ratio(cost: Cost, max_output_tokens: int) -> float | None:
    """Output tokens used / the bound, from a finished run: the next estimate's `expected_output_ratio`."""
    if max_output_tokens <= 0 or cost.success_records <= 0:
        return None
    return min(1.0, cost.output_tokens / (cost.success_records * max_output_tokens))


# --- presentation -----------------------------------------------------------------------------------


def _money(usd: float) -> str:
    return f"${usd:,.2f}" if usd >= 1 or usd == 0 else f"${usd:.4f}"


def _duration(minutes: float) -> str:
    hours, rest = divmod(round(minutes), 60)
    return f"{hours} h {rest:02d} min" if hours else f"{rest} min"


def estimate_rows(estimate: Estimate) -> list[dict[str, str]]:
    """The estimate as item/value rows (a Prefect table artifact, or `format_estimate`)."""
    price = estimate.price
    ratio = f"{estimate.expected_output_ratio:.0%} of the bound"
    rows = [
        ("model", f"{estimate.model_id} ({price.name})"),
        ("records", f"{estimate.total_records:,}"),
        ("shards x records", f"{estimate.n_shards:,} x <= {estimate.records_per_shard:,}"),
        ("slots / waves", f"{estimate.slots} / {estimate.waves}"),
        ("input tokens (est.)", f"{estimate.input_tokens:,}"),
        (
            "output tokens, bound",
            f"{estimate.output_tokens_bound:,} ({estimate.max_output_tokens:,} per record)",
        ),
        ("output tokens, expected", f"{estimate.output_tokens_expected:,} ({ratio})"),
        (
            "batch price per 1k tokens",
            f"in {_money(price.batch_input_per_1k)} / out {_money(price.batch_output_per_1k)}",
        ),
        ("cost, bound (batch)", _money(estimate.cost_bound_usd)),
        ("cost, expected (batch)", _money(estimate.cost_expected_usd)),
        ("cost, expected on-demand", _money(estimate.on_demand_expected_usd)),
        ("job duration (forecast)", _duration(estimate.job_minutes)),
        ("makespan (forecast)", _duration(estimate.makespan_minutes)),
    ]
    out = [{"item": item, "value": value} for item, value in rows]
    out += [{"item": "warning", "value": warning} for warning in estimate.warnings]
    return out


def format_estimate(estimate: Estimate) -> str:
    """A two-column plain-text table for the terminal (no colour codes: safe in logs)."""
    return _table(estimate_rows(estimate), title="Bedrock batch estimate")


def _table(rows: Iterable[dict[str, str]], title: str) -> str:
    rows = list(rows)
    left = max(len(r["item"]) for r in rows)
    right = max(len(r["value"]) for r in rows)
    rule = f"+-{'-' * left}-+-{'-' * right}-+"
    lines = [title, rule]
    lines += [f"| {r['item']:<{left}} | {r['value']:<{right}} |" for r in rows]
    lines.append(rule)
    return "\n".join(lines)
