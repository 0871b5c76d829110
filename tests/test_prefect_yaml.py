"""prefect.yaml checked offline: `prefect deploy` only prints what is wrong and skips the deployment."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel

REPO = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((REPO / "prefect.yaml").read_text())


def test_prefect_yaml_is_valid_for_prefect() -> None:
    model = PrefectYamlModel.model_validate(CONFIG)
    assert {d.name for d in model.deployments} == {"local", "ecs"}


@pytest.mark.parametrize("deployment", CONFIG["deployments"], ids=lambda d: d["name"])
def test_each_deployment_points_at_the_flow_and_its_parameters_validate(deployment: dict) -> None:
    path, name = deployment["entrypoint"].split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, name)
    assert flow.name == "bedrock-batch-inference"
    params = {k: v for k, v in deployment["parameters"].items() if not str(v).startswith("{{")}
    params["s3_uri"] = "s3://bucket/input.csv"  # the source is given per run
    validated = flow.validate_parameters(params)
    assert validated["max_concurrent_jobs"] == 20
    assert deployment["work_pool"]["name"].startswith("bedrock-batch-")


def test_a_bad_parameter_is_refused_by_the_flows_schema() -> None:
    from flows.batch_inference import batch_inference

    with pytest.raises(Exception, match="max_concurrent_jobs"):
        batch_inference.validate_parameters({"max_concurrent_jobs": "many"})
