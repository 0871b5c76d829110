"""Price lookup, the cost/time estimate, the budget guard and the cost of finished jobs."""

from __future__ import annotations

import json
import math

import pytest

from tasks.core.cost import (
    BudgetExceeded,
    DurationModel,
    Price,
    UnknownModelPrice,
    actual_cost,
    check_budget,
    estimate,
    estimate_rows,
    format_estimate,
    load_prices,
    lookup_price,
    observed_output_ratio,
)

HAIKU_3 = "anthropic.claude-3-haiku-20240307-v1:0"
FLAT = Price(name="flat", pattern="*", input_per_1k=0.002, output_per_1k=0.01)  # batch: 0.001 / 0.005


# --- the price table --------------------------------------------------------------------------------


def test_price_table_has_a_source_and_date_and_sane_rows():
    table = load_prices()

    assert table.source and table.as_of and table.batch_discount == 0.5
    for entry in table.entries:
        assert entry["input_per_1k"] > 0 and entry["output_per_1k"] >= 0, entry["name"]


@pytest.mark.parametrize(
    ("model_id", "name"),
    [
        (HAIKU_3, "Claude 3 Haiku"),
        ("anthropic.claude-3-5-sonnet-20241022-v2:0", "Claude 3.5 Sonnet"),
        ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", "Claude 3.7 Sonnet"),
        ("eu.anthropic.claude-sonnet-4-20250514-v1:0", "Claude Sonnet 4"),
        ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "Claude Sonnet 4.5+"),
        ("us.anthropic.claude-haiku-4-5-20251001-v1:0", "Claude Haiku 4.5"),
        ("anthropic.claude-opus-4-1-20250805-v1:0", "Claude Opus 4 / 4.1"),
        ("amazon.nova-micro-v1:0", "Amazon Nova Micro"),
        ("apac.amazon.nova-lite-v1:0", "Amazon Nova Lite"),
        ("us.amazon.nova-pro-v1:0", "Amazon Nova Pro"),
        ("us.meta.llama3-3-70b-instruct-v1:0", "Llama 3.3 70B Instruct"),
        ("meta.llama3-1-8b-instruct-v1:0", "Llama 3.1 8B Instruct"),
        ("mistral.mistral-large-2407-v1:0", "Mistral Large 2 (24.07)"),
        ("amazon.titan-embed-text-v2:0", "Titan Text Embeddings V2"),
        (
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
            "Claude 3 Haiku",
        ),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.nova-lite-v1:0",
            "Amazon Nova Lite",
        ),
    ],
)
def test_lookup_price_matches_ids_profiles_and_arns(model_id, name):
    assert lookup_price(model_id).name == name


def test_batch_price_is_half_of_on_demand():
    price = lookup_price(HAIKU_3)

    assert (price.input_per_1k, price.output_per_1k) == (0.00025, 0.00125)
    assert (price.batch_input_per_1k, price.batch_output_per_1k) == (0.000125, 0.000625)


def test_regional_endpoints_of_newer_claude_models_cost_ten_percent_more_than_global():
    regional = lookup_price("us.anthropic.claude-haiku-4-5-20251001-v1:0")
    global_ = lookup_price("global.anthropic.claude-haiku-4-5-20251001-v1:0")

    assert global_.input_per_1k == 0.001
    assert regional.input_per_1k == pytest.approx(0.0011)
    assert regional.regional_multiplier == 1.1


def test_embeddings_are_input_only():
    assert lookup_price("amazon.titan-embed-text-v2:0").output_per_1k == 0


def test_unknown_models_and_application_profiles_are_refused_by_name():
    with pytest.raises(UnknownModelPrice, match=r"acme\.model-x"):
        lookup_price("acme.model-x-v1:0")
    with pytest.raises(LookupError, match="pass price="):
        lookup_price("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6")


def test_a_custom_table_replaces_the_default(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "batch_discount": 0.4,
                "models": [{"name": "Mine", "pattern": "acme.*", "input_per_1k": 1, "output_per_1k": 2}],
            }
        )
    )

    price = lookup_price("us.acme.model-x", load_prices(path))

    assert (price.name, price.batch_input_per_1k, price.batch_output_per_1k) == ("Mine", 0.4, 0.8)


# --- the estimate -----------------------------------------------------------------------------------


def test_design_example_three_full_waves_and_batch_cost():
    """2.2M rows, 60 shards over 20 slots (DESIGN.md): three full waves."""
    result = estimate(
        total_records=2_200_000,
        input_tokens=440_000_000,  # 200 tokens per record
        max_output_tokens=300,
        model_id=HAIKU_3,
        n_shards=60,
        slots=20,
        duration=DurationModel(queue_minutes=30, records_per_minute=400, refill_lag_minutes=1),
    )

    assert (result.waves, result.records_per_shard) == (3, 36_667)
    assert result.output_tokens_bound == 660_000_000
    assert result.output_tokens_expected == 330_000_000  # default ratio 0.5
    # input 440M x 0.000125/1k = $55; output bound 660M x 0.000625/1k = $412.50
    assert result.cost_bound_usd == pytest.approx(55 + 412.5)
    assert result.cost_expected_usd == pytest.approx(55 + 206.25)
    assert result.on_demand_expected_usd == pytest.approx(2 * result.cost_expected_usd)
    job = 30 + 36_667 / 400
    assert result.job_minutes == pytest.approx(job)
    assert result.makespan_minutes == pytest.approx(3 * job + 2 * 1)
    assert result.warnings == ()


def test_a_partial_last_wave_costs_a_whole_wave_of_time():
    full = estimate(1_000, 0, 10, HAIKU_3, n_shards=10, slots=5, price=FLAT)
    partial = estimate(1_100, 0, 10, HAIKU_3, n_shards=11, slots=5, price=FLAT)

    assert (full.waves, partial.waves) == (2, 3)
    assert partial.makespan_minutes > 1.4 * full.makespan_minutes
    assert partial.warnings == ("the last wave fills 1 of 5 slots",)


def test_output_token_throughput_can_be_the_bottleneck():
    slow_writer = DurationModel(queue_minutes=0, records_per_minute=1_000, output_tokens_per_minute=10_000)

    result = estimate(10_000, 0, 1_000, HAIKU_3, n_shards=1, slots=1, duration=slow_writer, price=FLAT)

    # 10k records = 10 min by records, but 5M expected output tokens = 500 min by tokens.
    assert result.job_minutes == pytest.approx(500)


def test_quota_and_timeout_problems_become_warnings():
    result = estimate(
        120_000,
        0,
        100,
        HAIKU_3,
        n_shards=2,
        slots=20,
        job_timeout_hours=24,
        duration=DurationModel(records_per_minute=10),
        price=FLAT,
    )

    text = " | ".join(result.warnings)
    assert "60,000 records exceed the 50,000 per-job maximum" in text
    assert "beyond its 24 h timeout" in text
    assert "2 shards use 2 of 20 slots" in text
    tiny = estimate(150, 0, 100, HAIKU_3, n_shards=2, slots=2, price=FLAT)
    assert tiny.warnings == ("shards of 75 records are below the 100 per-job minimum",)


def test_embeddings_cost_only_input():
    result = estimate(1_000_000, 50_000_000, 0, "amazon.titan-embed-text-v2:0", n_shards=20, slots=20)

    assert result.output_tokens_bound == 0
    assert result.cost_bound_usd == result.cost_expected_usd == pytest.approx(50_000 * 0.00001)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"total_records": -1},
        {"slots": 0},
        {"n_shards": 0},
        {"expected_output_ratio": 1.5},
    ],
)
def test_impossible_inputs_are_refused(kwargs):
    args = {"total_records": 100, "input_tokens": 0, "max_output_tokens": 1, "n_shards": 1, "slots": 1}
    args.update(kwargs)
    with pytest.raises(ValueError):
        estimate(model_id=HAIKU_3, price=FLAT, **args)


# --- budget -----------------------------------------------------------------------------------------


def test_budget_is_checked_against_the_bound_by_default():
    result = estimate(10_000, 1_000_000, 1_000, HAIKU_3, n_shards=1, slots=1, price=FLAT)
    # input $1 + bound 10M x 0.005/1k = $50 -> $51 bound, $26 expected
    assert result.cost_bound_usd == pytest.approx(51)

    check_budget(result, None)
    check_budget(result, 51)
    check_budget(result, 30, basis="expected")
    with pytest.raises(BudgetExceeded, match=r"bound cost \$51.00 exceeds the budget of \$30.00"):
        check_budget(result, 30)
    assert issubclass(BudgetExceeded, ValueError)


# --- actual cost ------------------------------------------------------------------------------------


def test_actual_cost_sums_manifests_at_batch_prices():
    manifests = [
        {
            "totalRecordCount": 100,
            "processedRecordCount": 100,
            "successRecordCount": 98,
            "errorRecordCount": 2,
            "inputTokenCount": 20_000,
            "outputTokenCount": 5_000,
        },
        {
            "totalRecordCount": 50,
            "processedRecordCount": 10,
            "successRecordCount": 10,
            "inputTokenCount": 2_000,
        },
        {},  # a failed job without counts
    ]

    cost = actual_cost(manifests, HAIKU_3)

    assert (cost.jobs, cost.total_records, cost.success_records, cost.error_records) == (3, 150, 108, 2)
    assert (cost.input_tokens, cost.output_tokens) == (22_000, 5_000)
    assert cost.batch_usd == pytest.approx(22 * 0.000125 + 5 * 0.000625)
    assert cost.on_demand_usd == pytest.approx(2 * cost.batch_usd)


def test_observed_output_ratio_calibrates_the_next_estimate():
    manifest = {"successRecordCount": 100, "outputTokenCount": 12_000}

    ratio = observed_output_ratio(actual_cost([manifest], HAIKU_3), max_output_tokens=400)

    assert ratio == pytest.approx(0.3)
    assert observed_output_ratio(actual_cost([], HAIKU_3), max_output_tokens=400) is None


# --- presentation -----------------------------------------------------------------------------------


def test_rows_and_terminal_table_show_costs_time_and_warnings():
    result = estimate(1_100, 220_000, 100, "us.amazon.nova-lite-v1:0", n_shards=11, slots=5)

    rows = {r["item"]: r["value"] for r in estimate_rows(result)}
    text = format_estimate(result)

    assert rows["slots / waves"] == "5 / 3"
    assert rows["shards x records"] == "11 x <= 100"
    assert rows["cost, bound (batch)"] == f"${result.cost_bound_usd:.4f}"
    assert rows["warning"] == "the last wave fills 1 of 5 slots"
    assert rows["makespan (forecast)"] == f"{math.floor(result.makespan_minutes / 60)} h " + (
        f"{round(result.makespan_minutes) % 60:02d} min"
    )
    lines = text.splitlines()
    assert lines[0] == "Bedrock batch estimate"
    assert len({len(line) for line in lines[1:]}) == 1  # a rectangular table
    assert "Amazon Nova Lite" in text and "the last wave fills 1 of 5 slots" in text
