"""Pre-flight: refuse a run that cannot work before anything is uploaded, created or submitted.

The flow's first task (and the CLI, before it starts the flow) runs `run_checks(cfg)`: the parameters'
bounds, the service role, the model id against Bedrock's catalog, the output bucket (exists, in the run's
region), the input (not empty) and last a write probe that leaves nothing behind. A failed check raises
`RunRefused`, whose text is the one line a person reads: what is wrong, naming the parameter or file, and
what to do. Nothing here creates anything but the probe object, which is deleted at once; no concurrency
limit, no Bedrock call other than the catalog's Get/List.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from tasks.aws import client, join_s3, split_s3_uri

if TYPE_CHECKING:
    from tasks.core.config import RunConfig

ClientFactory = Callable[..., Any]

BEDROCK_MIN_RECORDS = 100  # Bedrock's minimum records per batch job (a quota: min_records_per_job overrides)
# Bedrock's `roleArn` pattern (CreateModelInvocationJob).
ROLE_ARN = re.compile(r"arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+")
_ARN = re.compile(r"arn:aws(?:-[^:]+)?:bedrock:[^:]*:[^:]*:(?P<kind>[a-z-]+)/(?P<id>.+)")
# A system inference profile's id is a geography, a dot and a model id (`us.anthropic.claude-...`).
_PROFILE_ID = re.compile(r"(?:us|us-gov|eu|apac|jp|au|ca|global)\.[a-z0-9-]+\..+", re.IGNORECASE)
PROBE_NAME = ".write-check"


class RunRefused(ValueError):
    """The run cannot work as asked; nothing was created. Its text is one line: what is wrong, what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def refusal(err: BaseException) -> RunRefused:
    """`err` as a refusal (bad input found later, e.g. by prepare): one line, the cause kept."""
    if isinstance(err, RunRefused):
        return err
    refused = RunRefused(str(err) or type(err).__name__)
    refused.__cause__ = err
    return refused


def run_checks(cfg: RunConfig, client_factory: ClientFactory = client) -> list[str]:
    """Every pre-flight check in order, the write probe last; returns warnings (checks that could not be
    made, e.g. for lack of a permission), raises `RunRefused` for the first check that fails."""
    check_config(cfg)
    check_role(cfg)
    try:
        warnings = check_model(cfg, client_factory)
        warnings += check_bucket(cfg, client_factory)
        check_source(cfg)
        check_writable(cfg, client_factory)
    except NoCredentialsError as err:
        raise RunRefused(f"no AWS credentials found ({err}): set AWS_PROFILE or the AWS_ACCESS_KEY_ID / "
                         f"AWS_SECRET_ACCESS_KEY environment variables, or run offline with --local") from err
    return warnings


# ------------------------------------------------------------------------------------- parameters


def check_config(cfg: RunConfig) -> None:
    """The parameters alone (no I/O): one source, bounds with their numbers, locations. `RunConfig` runs
    this when it is built, so no configuration the flow refuses ever exists."""
    sources = [s for s in (cfg.s3_uri, cfg.input_path, cfg.dataset_id) if s]
    if len(sources) != 1:
        raise RunRefused(f"give exactly one source: s3_uri, input_path or dataset_id (+ split); got "
                         f"{len(sources)}")
    if not 1 <= cfg.max_concurrent_jobs <= 1000:
        raise RunRefused(f"max_concurrent_jobs {cfg.max_concurrent_jobs} is outside 1..1000: give the number "
                         f"of jobs Bedrock lets this account run at once for the model (20 by default)")
    if not 24 <= cfg.timeout_hours <= 168:
        raise RunRefused(f"timeout_hours {cfg.timeout_hours} is outside Bedrock's bounds of 24..168 hours: "
                         f"give a value between them")
    if cfg.min_records_per_job < 1:
        raise RunRefused(f"min_records_per_job {cfg.min_records_per_job} must be 1 or more "
                         f"(Bedrock's minimum is {BEDROCK_MIN_RECORDS} records per job)")
    if cfg.max_records_per_job < cfg.min_records_per_job:
        mx, mn = cfg.max_records_per_job, cfg.min_records_per_job
        if mn == BEDROCK_MIN_RECORDS:
            raise RunRefused(f"max_records_per_job {mx:,} is below Bedrock's minimum of {mn:,} records per job "
                             f"(min_records_per_job {mn:,}): raise max_records_per_job to {mn:,} or more")
        raise RunRefused(f"max_records_per_job {mx:,} is below min_records_per_job {mn:,}: raise "
                         f"max_records_per_job to {mn:,} or more (Bedrock's own minimum is "
                         f"{BEDROCK_MIN_RECORDS} records per job)")
    if cfg.max_num_jobs is not None and cfg.max_num_jobs < 1:
        raise RunRefused(f"max_num_jobs {cfg.max_num_jobs} must be 1 or more (leave it unset for all rows)")
    if cfg.max_record_bytes < 1:
        raise RunRefused(f"max_record_bytes {cfg.max_record_bytes} must be 1 or more (Bedrock's limit is "
                         f"1,000,000 bytes per record)")
    if cfg.max_job_attempts < 1:
        raise RunRefused(f"max_job_attempts {cfg.max_job_attempts} must be 1 or more")
    if cfg.poll_interval_s <= 0:
        raise RunRefused(f"poll_interval_s {cfg.poll_interval_s} must be above 0 seconds")
    for name in ("output_uri", "job_name_prefix"):
        value = getattr(cfg, name) or ""
        if ".." in value.replace("\\", "/").split("/") or (name == "job_name_prefix" and ".." in value):
            raise RunRefused(f"{name} {value!r} contains '..': give a plain name or s3://bucket/prefix")
    if cfg.output_uri and not cfg.output_uri.startswith("s3://"):
        raise RunRefused(f"output_uri {cfg.output_uri!r} must be an S3 location: s3://bucket/prefix")


def check_role(cfg: RunConfig) -> None:
    """A run that submits jobs needs the service role Bedrock runs them as (`--local` sets one)."""
    if cfg.dry_run:
        return
    if not cfg.role_arn:
        raise RunRefused("role_arn is not set: Bedrock runs batch jobs as a service role that can read and "
                         "write the output bucket; give role_arn (--role-arn arn:aws:iam::<account>:role/<name>; "
                         "deployments/bedrock-batch-flows.cfn.yaml creates one), or run offline with --local")
    if not ROLE_ARN.fullmatch(cfg.role_arn):
        raise RunRefused(f"role_arn {cfg.role_arn!r} is not an IAM role ARN: give "
                         f"arn:aws:iam::<12-digit account>:role/<name>")


# ------------------------------------------------------------------------------------------ model


def check_model(cfg: RunConfig, client_factory: ClientFactory = client) -> list[str]:
    """The model id or inference profile exists in the run's region and the flow can format its requests."""
    from tasks.core.formats import UnknownModelError, resolve_family

    model_id = cfg.model_id.strip()
    region = cfg.aws.region
    bedrock = client_factory("bedrock", cfg.aws)
    arn = _ARN.fullmatch(model_id)
    kind = arn["kind"] if arn else ("inference-profile" if _PROFILE_ID.fullmatch(model_id) else "foundation-model")
    try:
        if kind == "foundation-model":
            bedrock.get_foundation_model(modelIdentifier=model_id)
        elif kind in ("inference-profile", "application-inference-profile"):
            bedrock.get_inference_profile(inferenceProfileIdentifier=model_id)
        # provisioned, custom or imported model ARNs have no catalog entry: Bedrock checks them on submission
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("ResourceNotFoundException", "ValidationException"):
            raise RunRefused(_unknown_model(model_id, region, bedrock)) from err
        if code in ("AccessDeniedException", "UnauthorizedOperation"):
            return [f"cannot check model_id {model_id!r} ({code}); the caller needs bedrock:GetFoundationModel "
                    f"and bedrock:GetInferenceProfile (deployments/bedrock-batch-flows.cfn.yaml grants them)"]
        raise
    try:
        resolve_family(model_id, cfg.invocation_type)
    except UnknownModelError as err:
        raise RunRefused(str(err)) from err
    return []


def _unknown_model(model_id: str, region: str, bedrock: Any) -> str:
    known = catalog_ids(bedrock)
    close = difflib.get_close_matches(model_id, known, n=2, cutoff=0.75)
    if close:
        hint = f"did you mean {close[0]!r}" + (f" (or {close[1]!r})" if len(close) > 1 else "") + "?"
    else:
        hint = f"`aws bedrock list-foundation-models --region {region}` and `list-inference-profiles` list them"
    return f"model_id {model_id!r} is not a Bedrock model or inference profile in {region}: {hint}"


def catalog_ids(bedrock: Any) -> list[str]:
    """Model ids and inference-profile ids of the region (empty if they cannot be listed)."""
    ids: list[str] = []
    try:
        ids += [m["modelId"] for m in bedrock.list_foundation_models().get("modelSummaries", [])]
        token = None
        while True:
            page = bedrock.list_inference_profiles(**({"nextToken": token} if token else {}))
            ids += [p["inferenceProfileId"] for p in page.get("inferenceProfileSummaries", [])]
            token = page.get("nextToken")
            if not token:
                break
    except (ClientError, BotoCoreError):
        pass
    return ids


# ------------------------------------------------------------------------------------------ output


def check_bucket(cfg: RunConfig, client_factory: ClientFactory = client) -> list[str]:
    """The output bucket exists and is in the run's region (Bedrock reads and writes S3 in its own)."""
    bucket, _ = split_s3_uri(cfg.output_base)
    where = f"output_uri {cfg.output_uri}" if cfg.output_uri else "no output_uri given, the default location"
    region = cfg.aws.region
    s3 = client_factory("s3", cfg.aws)
    found: str | None = None
    try:
        head = s3.head_bucket(Bucket=bucket)
        found = head.get("BucketRegion") or _region_header(head)
    except ClientError as err:
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = err.response.get("Error", {}).get("Code", "")
        if status == 404 or code in ("404", "NoSuchBucket"):
            raise RunRefused(f"output bucket {bucket!r} does not exist ({where}): create it in {region} "
                             f"(`aws s3 mb s3://{bucket} --region {region}`) or give another output_uri") from err
        if status not in (301, 400, 403):
            raise RunRefused(f"cannot reach output bucket {bucket!r} ({where}): {code or status} "
                             f"{err.response.get('Error', {}).get('Message', '')}".rstrip()) from err
        found = _region_header(err.response)  # 403: no s3:ListBucket; the write probe decides
    if found is None:
        try:
            found = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") or "us-east-1"
        except ClientError:
            return [f"cannot tell the region of output bucket {bucket!r} (no s3:GetBucketLocation); it must "
                    f"be {region}, the run's region"]
    found = {"EU": "eu-west-1"}.get(found, found)
    if found != region:
        raise RunRefused(f"output bucket {bucket!r} is in {found}, but the run's region is {region} "
                         f"(Bedrock batch jobs read and write S3 in their own region): use a bucket in "
                         f"{region} as output_uri, or run in {found} (region={found} or AWS_REGION)")
    return []


def _region_header(response: dict[str, Any]) -> str | None:
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return headers.get("x-amz-bucket-region")


def check_writable(cfg: RunConfig, client_factory: ClientFactory = client) -> None:
    """Write and delete a probe object in the run's folder: the last check, and it leaves nothing behind."""
    bucket, key = split_s3_uri(join_s3(cfg.run_uri, PROBE_NAME))
    s3 = client_factory("s3", cfg.aws)
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"ok")
    except ClientError as err:
        raise RunRefused(f"output_uri {cfg.output_base} cannot be written ({_code(err)}): the caller needs "
                         f"s3:PutObject and s3:DeleteObject on {cfg.output_base}/*, "
                         f"or give another output_uri") from err
    try:
        s3.delete_object(Bucket=bucket, Key=key)
    except ClientError as err:
        raise RunRefused(f"output_uri {cfg.output_base} lets the caller write but not delete ({_code(err)}): "
                         f"the flow replaces its own files; grant s3:DeleteObject on {cfg.output_base}/* "
                         f"(and delete s3://{bucket}/{key})") from err


def _code(err: ClientError) -> str:
    error = err.response.get("Error", {})
    return ": ".join(x for x in (error.get("Code"), error.get("Message")) if x) or str(err)


# ------------------------------------------------------------------------------------------- input


def check_source(cfg: RunConfig) -> None:
    """A file source can be read and has a first row (a Hugging Face dataset is checked by prepare)."""
    import polars as pl

    from tasks.core.sources import SourceError, SourceSpec, load_source

    if cfg.dataset_id:
        return
    spec = SourceSpec(s3_uri=cfg.s3_uri, input_path=cfg.input_path, record_id_column=cfg.record_id_column)
    where = spec.describe()
    try:
        first = load_source(spec, cfg.aws).head(1).select(pl.len()).collect().item()
    except SourceError as err:
        raise RunRefused(str(err)) from err
    except ClientError as err:
        raise RunRefused(f"cannot read the input {where} ({_code(err)}): check the location and the "
                         f"caller's s3:GetObject / s3:ListBucket rights") from err
    except pl.exceptions.PolarsError as err:
        text = str(err).strip().splitlines()
        raise RunRefused(f"cannot read the input {where}: {text[0] if text else type(err).__name__}") from err
    if not first:
        header = " (only a header line)" if where.lower().endswith((".csv", ".tsv")) else ""
        raise RunRefused(f"input {where} has no rows{header}: nothing to run; check that it is the file you meant")
