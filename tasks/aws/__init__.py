"""The one place that creates AWS clients.

Production and the local embedded default run the same boto3 calls; only the endpoint differs. Nothing
else in the project reads AWS settings or builds a client, so "local vs. AWS" is decided here and only
here (AWS_ENDPOINT_URL set, or an endpoint in the credentials block -> emulator/moto; unset -> the real
service).

Credentials: boto3's default chain (environment, `AWS_PROFILE`, instance or task role), or a prefect-aws
`AwsCredentials` block (the flow's `aws_credentials` parameter): its keys or profile, region and client
parameters (endpoint URL, botocore config, SSL verification) then drive every boto3 client and Polars'
S3 access alike.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class AwsSettings:
    """Where and how to reach AWS. Plain data (and a hashable block), so it can cross into Prefect task
    parameters and key the client cache."""

    region: str = DEFAULT_REGION
    endpoint_url: str | None = None
    profile_name: str | None = None
    max_attempts: int = 10
    extra: tuple[tuple[str, str], ...] = field(default=())
    # A prefect-aws AwsCredentials block; None: boto3's default credential chain.
    credentials: Any = field(default=None, repr=False)

    @classmethod
    def from_env(cls, credentials: Any = None, **overrides: Any) -> AwsSettings:
        """Explicit `overrides` > the `credentials` block (its region, endpoint URL) > environment > default."""
        values: dict[str, Any] = {
            "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
            "endpoint_url": os.environ.get("AWS_ENDPOINT_URL") or None,
            "profile_name": os.environ.get("AWS_PROFILE") or None,
        }
        if credentials is not None:
            block = {"region": credentials.region_name, "endpoint_url": credentials.aws_client_parameters.endpoint_url}
            values.update({k: v for k, v in block.items() if v})
            values.update(credentials=credentials, profile_name=credentials.profile_name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


_lock = threading.Lock()


def credentials_block(value: Any) -> Any:
    """The flow's `aws_credentials` as an AwsCredentials block: a block, a block reference
    (`{"$ref": {"block_document_slug": "aws-credentials/NAME"}}`, as a deployment stores it), a saved
    block's name, or the block's fields; None stays None (the default credential chain)."""
    if value is None or value == "":
        return None
    from prefect_aws import AwsCredentials

    if isinstance(value, str):
        return AwsCredentials.load(value.removeprefix("aws-credentials/"))
    if isinstance(value, dict) and "$ref" in value:
        from prefect.blocks.core import Block

        value = Block.load_from_ref(value["$ref"])  # as the flow resolves it (slugs are `type/name`)
    if isinstance(value, AwsCredentials):
        return value
    if isinstance(value, dict):
        return AwsCredentials.model_validate(value)
    raise ValueError(f"aws_credentials must be an AwsCredentials block, not {type(value).__name__}")


def _session(settings: AwsSettings) -> Any:
    """A boto3 session with the block's credentials (keys, profile or assumed role), else the default chain."""
    if settings.credentials is None:
        return boto3.session.Session(profile_name=settings.profile_name, region_name=settings.region)
    if settings.credentials.assume_role_arn:
        return _assumed_role_session(settings.credentials)
    return settings.credentials.get_boto3_session()


@lru_cache(maxsize=8)
def _assumed_role_session(block: Any) -> Any:
    """A session that assumes the block's role again before its credentials expire.

    prefect-aws assumes the role once: its credentials end after an hour (or the role's DurationSeconds),
    while a run polls its jobs for many hours. botocore refreshes these ones itself, 15 minutes ahead."""
    import uuid

    import botocore.session
    from botocore.credentials import CredentialProvider, DeferredRefreshableCredentials

    base = block.model_copy(update={"assume_role_arn": None}).get_boto3_session()
    client_params = block.aws_client_parameters.get_params_override()
    request = {"RoleSessionName": f"bedrock-batch-flows-{uuid.uuid4().hex[:8]}",
               **block.assume_role_kwargs.get_params_override(), "RoleArn": block.assume_role_arn}

    def assume() -> dict[str, str]:
        sts = base.client("sts", **client_params)
        found = sts.assume_role(**request)["Credentials"]
        return {"access_key": found["AccessKeyId"], "secret_key": found["SecretAccessKey"],
                "token": found["SessionToken"], "expiry_time": found["Expiration"].isoformat()}

    class AssumedRole(CredentialProvider):
        METHOD = "prefect-aws-assume-role"

        def load(self) -> Any:
            return DeferredRefreshableCredentials(refresh_using=assume, method=self.METHOD)

    core = botocore.session.get_session()
    core.get_component("credential_provider").insert_before("env", AssumedRole())
    return boto3.session.Session(botocore_session=core, region_name=block.region_name)


@lru_cache(maxsize=64)
def _client(service: str, settings: AwsSettings) -> Any:
    # boto3 sessions are not thread-safe, clients are: build under a lock, share the client.
    with _lock:
        session = _session(settings)
        config = Config(
            retries={"mode": "standard", "max_attempts": settings.max_attempts},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=64,
        )
        params: dict[str, Any] = {}
        if settings.credentials is not None:  # the block's client parameters; its botocore config wins
            params = settings.credentials.aws_client_parameters.get_params_override()
            if (block_config := params.pop("config", None)) is not None:
                config = config.merge(block_config)
        params["endpoint_url"] = settings.endpoint_url
        return session.client(service, region_name=settings.region, config=config, **params)


def client(service: str, settings: AwsSettings | None = None) -> Any:
    """A boto3 client for `service` (cached per settings; safe to share between threads)."""
    return _client(service, settings or AwsSettings.from_env())


def storage_options(settings: AwsSettings | None = None) -> dict[str, str]:
    """Settings for Polars' native object_store (`scan_parquet("s3://...", storage_options=...)`)."""
    settings = settings or AwsSettings.from_env()
    options = {"aws_region": settings.region}
    if settings.endpoint_url:
        options["aws_endpoint_url"] = settings.endpoint_url
        options["aws_allow_http"] = "true" if settings.endpoint_url.startswith("http://") else "false"
        options["aws_virtual_hosted_style_request"] = "false"
    credentials = _credentials(settings)
    if credentials is not None:
        options["aws_access_key_id"] = credentials.access_key
        options["aws_secret_access_key"] = credentials.secret_key
        if credentials.token:
            options["aws_session_token"] = credentials.token
    return options


def _credentials(settings: AwsSettings) -> Any:
    with _lock:  # the assumed-role session is shared
        found = _session(settings).get_credentials()
    return found.get_frozen_credentials() if found is not None else None


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key/prefix` -> (`bucket`, `key/prefix`)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def join_s3(uri: str, *parts: str) -> str:
    """Join URI parts with single slashes (`s3://b/p/`, `x` -> `s3://b/p/x`)."""
    out = uri.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out
