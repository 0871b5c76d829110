"""The CloudFormation template: static checks on the parsed YAML, then a real create_stack in moto.

moto creates the bucket (with encryption), the roles, the managed policy and the SNS topic, but skips
AWS::S3::BucketPolicy and ignores the bucket's lifecycle, public access block and the role's
ManagedPolicyArns: those are checked on the template itself.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.aws import client

TEMPLATE = Path(__file__).resolve().parent.parent / "deployments" / "bedrock-batch-flows.cfn.yaml"
# moto warns that it skips the bucket policy; that is expected (see the module docstring).
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS..S3..BucketPolicy:UserWarning")

PSEUDO = {
    "AWS::AccountId",
    "AWS::Partition",
    "AWS::Region",
    "AWS::StackName",
    "AWS::NoValue",
    "AWS::URLSuffix",
}


class CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short forms (`!Ref X`, `!Sub s`, `!GetAtt A.B`) as their long forms."""


def _cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


def walk(node: Any):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def policy_document(document: Any) -> dict[str, Any]:
    """boto3 decodes IAM policy JSON; moto returns CloudFormation inline policies as a Python repr."""
    if isinstance(document, dict):
        return document
    try:
        return json.loads(document)
    except json.JSONDecodeError:
        return ast.literal_eval(document)


def statements(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in document["Statement"]}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- the template as data ---------------------------------------------------------------------------


def test_every_reference_names_a_parameter_resource_or_pseudo_parameter(template):
    known = set(template["Parameters"]) | set(template["Resources"]) | PSEUDO
    used: set[str] = set()
    for node in walk(template):
        if isinstance(node, dict) and "Ref" in node:
            used.add(node["Ref"])
        elif isinstance(node, dict) and "Fn::GetAtt" in node:
            used.add(node["Fn::GetAtt"][0])
        elif isinstance(node, dict) and "Fn::Sub" in node:
            used |= {name.split(".")[0] for name in re.findall(r"\$\{([^!}][^}]*)\}", node["Fn::Sub"])}

    assert used - known == set()
    assert {"BucketName", "ProjectPrefix", "CreateEcsTaskRole", "AlarmEmail"} <= used


def test_conditions_used_by_resources_and_outputs_are_declared(template):
    conditions = set(template["Conditions"])
    used = {r["Condition"] for r in template["Resources"].values() if "Condition" in r}
    used |= {o["Condition"] for o in template["Outputs"].values() if "Condition" in o}
    used |= {n["Fn::If"][0] for n in walk(template) if isinstance(n, dict) and "Fn::If" in n}

    assert used == conditions


def test_bucket_is_private_encrypted_and_expires_scratch_data(template):
    bucket = template["Resources"]["Bucket"]
    props = bucket["Properties"]

    assert bucket["DeletionPolicy"] == "Retain"
    assert set(props["PublicAccessBlockConfiguration"].values()) == {True}
    [rule] = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    rules = {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"] if "Id" in r}
    scratch = rules["expire-run-scratch"]
    assert scratch["Prefix"] == {"Fn::Sub": "${ProjectPrefix}/"}
    assert scratch["TagFilters"] == [{"Key": "retention", "Value": "scratch"}]
    assert "AbortIncompleteMultipartUpload" in rules["abort-incomplete-multipart-uploads"]


def test_service_role_grants_only_object_read_write_and_listing(template):
    role = template["Resources"]["BedrockBatchServiceRole"]["Properties"]
    actions = {
        action
        for policy in role["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        for action in as_list(statement["Action"])
    }

    assert actions == {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}


def test_ecs_task_role_carries_the_caller_policy(template):
    ecs = template["Resources"]["EcsTaskRole"]

    assert ecs["Condition"] == "WithEcsTaskRole"
    assert ecs["Properties"]["ManagedPolicyArns"] == [{"Ref": "CallerPolicy"}]


@pytest.mark.slow  # not in ./dev fast: cfn-lint loads every resource schema (~5-8 s of CPU)
@pytest.mark.skipif(shutil.which("cfn-lint") is None, reason="cfn-lint not installed (optional)")
def test_cfn_lint_finds_nothing():
    """AWS's own schema checks, when the linter happens to be installed (it is not a dependency)."""
    result = subprocess.run(["cfn-lint", str(TEMPLATE)], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr


# --- the stack in moto ------------------------------------------------------------------------------


def create_stack(aws, **parameters: str) -> dict[str, str]:
    """Create the stack over HTTP; returns its outputs."""
    cloudformation = client("cloudformation", aws)
    name = f"bbf-{uuid.uuid4().hex[:8]}"
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    [stack] = cloudformation.describe_stacks(StackName=name)["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


@pytest.fixture(scope="module")
def stack(aws) -> dict[str, str]:
    """The default stack: bucket, service role, caller policy; no ECS role, no topic."""
    bucket = f"bbf-{uuid.uuid4().hex[:10]}"
    return {"Bucket": bucket, **create_stack(aws, BucketName=bucket, ProjectPrefix="batch-runs")}


def role_name(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def test_stack_outputs_name_the_bucket_role_and_policy(stack):
    assert stack["BucketName"] == stack["Bucket"]
    assert stack["OutputUri"] == f"s3://{stack['Bucket']}/batch-runs"
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/.+", stack["ServiceRoleArn"])
    assert re.fullmatch(r"arn:aws:iam::\d{12}:policy/.+", stack["CallerPolicyArn"])
    assert "EcsTaskRoleArn" not in stack and "AlarmTopicArn" not in stack


def test_bucket_exists_with_default_encryption(aws, stack):
    s3 = client("s3", aws)
    s3.head_bucket(Bucket=stack["Bucket"])

    [rule] = s3.get_bucket_encryption(Bucket=stack["Bucket"])["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_only_this_accounts_bedrock_batch_jobs_may_assume_the_service_role(aws, stack):
    role = client("iam", aws).get_role(RoleName=role_name(stack["ServiceRoleArn"]))["Role"]
    [trust] = policy_document(role["AssumeRolePolicyDocument"])["Statement"]
    account = client("sts", aws).get_caller_identity()["Account"]

    assert trust["Principal"] == {"Service": "bedrock.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {
        "StringEquals": {"aws:SourceAccount": account},
        "ArnLike": {"aws:SourceArn": f"arn:aws:bedrock:us-east-1:{account}:model-invocation-job/*"},
    }


def test_service_role_s3_rights_stop_at_the_project_prefix(aws, stack):
    iam = client("iam", aws)
    name = role_name(stack["ServiceRoleArn"])
    [policy_name] = iam.list_role_policies(RoleName=name)["PolicyNames"]
    document = policy_document(iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"])
    by_sid = statements(document)
    bucket = stack["Bucket"]

    assert by_sid["ReadInputsWriteOutputs"]["Resource"] == f"arn:aws:s3:::{bucket}/batch-runs/*"
    listing = by_sid["ListProjectPrefix"]
    assert listing["Resource"] == f"arn:aws:s3:::{bucket}"
    assert listing["Condition"]["StringLike"]["s3:prefix"] == ["batch-runs", "batch-runs/*"]
    every_resource = [r for s in document["Statement"] for r in as_list(s["Resource"])]
    assert all(r in {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/batch-runs/*"} for r in every_resource)


def test_caller_policy_passes_only_the_service_role_and_scopes_s3(aws, stack):
    iam = client("iam", aws)
    version = iam.get_policy(PolicyArn=stack["CallerPolicyArn"])["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=stack["CallerPolicyArn"], VersionId=version)["PolicyVersion"]
    by_sid = statements(policy_document(document["Document"]))

    assert by_sid["PassServiceRoleToBedrock"]["Action"] == "iam:PassRole"
    assert by_sid["PassServiceRoleToBedrock"]["Resource"] == stack["ServiceRoleArn"]
    assert by_sid["PassServiceRoleToBedrock"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "bedrock.amazonaws.com"}
    }
    assert {
        "bedrock:CreateModelInvocationJob",
        "bedrock:GetModelInvocationJob",
        "bedrock:ListModelInvocationJobs",
        "bedrock:StopModelInvocationJob",
    } <= set(by_sid["BatchJobs"]["Action"])
    assert by_sid["OnDemandRepairs"]["Action"] == ["bedrock:InvokeModel"]
    assert by_sid["ProjectObjects"]["Resource"] == f"arn:aws:s3:::{stack['Bucket']}/batch-runs/*"
    cloudwatch = set(by_sid["ReadMetrics"]["Action"]) | set(by_sid["ManageOwnAlarmsAndDashboards"]["Action"])
    assert {"cloudwatch:GetMetricData", "cloudwatch:PutMetricAlarm", "cloudwatch:PutDashboard"} <= cloudwatch
    assert all(
        ":alarm:batch-runs-" in r or ":dashboard/batch-runs-" in r
        for r in by_sid["ManageOwnAlarmsAndDashboards"]["Resource"]
    )


def test_optional_ecs_task_role_and_alarm_topic(aws):
    outputs = create_stack(
        aws, BucketName=f"bbf-{uuid.uuid4().hex[:10]}", CreateEcsTaskRole="true", AlarmEmail="ops@example.com"
    )

    role = client("iam", aws).get_role(RoleName=role_name(outputs["EcsTaskRoleArn"]))["Role"]
    [trust] = policy_document(role["AssumeRolePolicyDocument"])["Statement"]
    assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    subscriptions = client("sns", aws).list_subscriptions_by_topic(TopicArn=outputs["AlarmTopicArn"])
    assert [(s["Protocol"], s["Endpoint"]) for s in subscriptions["Subscriptions"]] == [
        ("email", "ops@example.com")
    ]
