"""Where a job reads its input and writes its outputs: any S3 through boto3, or this process's own moto.

Bedrock reaches S3 from inside AWS; the emulator's counterpart is `MotoStore`, which reads and writes the
objects of the server's in-process moto backend directly (a 100 MB output file costs a third of an HTTP
PUT through moto's server app, an input file a quarter of a GET). Buckets the backend does not hold (another
account, another endpoint) go through `S3Store`, i.e. plain boto3, so the same job code runs against any S3.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, Protocol

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

MULTIPART = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=4)
NOT_FOUND = ("404", "NoSuchKey", "NotFound")
SPOOL_LIMIT = 8 << 20  # objects above this go to disk at once (see MotoStore.put)


class StoreError(Exception):
    """An object or bucket could not be read (missing, or access refused)."""


class ObjectStore(Protocol):
    def listing(self, bucket: str, key: str) -> list[tuple[str, int]]:
        """(key, size) of the object `key`, or else of every `.jsonl` object under the prefix `key`."""
        ...

    def get(self, bucket: str, key: str) -> bytes: ...

    def put(self, bucket: str, key: str, body: bytes | memoryview) -> None: ...


class S3Store:
    """Objects through a boto3 S3 client (built on first use)."""

    def __init__(self, client: Callable[[], Any]) -> None:
        self._client = client

    def listing(self, bucket: str, key: str) -> list[tuple[str, int]]:
        s3 = self._client()
        try:
            if key and not key.endswith("/"):
                try:
                    return [(key, int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"]))]
                except ClientError as exc:
                    if exc.response["Error"]["Code"] not in NOT_FOUND:
                        raise
            prefix = f"{key.rstrip('/')}/" if key else ""
            return [
                (o["Key"], int(o["Size"]))
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                for o in page.get("Contents", [])
                if o["Key"].endswith(".jsonl")
            ]
        except ClientError as exc:
            raise StoreError(str(exc)) from exc

    def get(self, bucket: str, key: str) -> bytes:
        try:
            return self._client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            raise StoreError(str(exc)) from exc

    def put(self, bucket: str, key: str, body: bytes | memoryview) -> None:
        self._client().upload_fileobj(io.BytesIO(body), bucket, key, Config=MULTIPART)


class MotoStore:
    """Objects of an in-process moto S3 backend, read and written without HTTP; other buckets via `fallback`.

    Listing stays on `fallback` (one cheap call, and moto's listing internals change between versions).
    """

    def __init__(self, backend: Callable[[], Any], fallback: S3Store) -> None:
        self._backend = backend
        self._fallback = fallback

    def _holds(self, bucket: str) -> Any:
        backend = self._backend()
        return backend if bucket in backend.buckets else None

    def listing(self, bucket: str, key: str) -> list[tuple[str, int]]:
        return self._fallback.listing(bucket, key)

    def get(self, bucket: str, key: str) -> bytes:
        backend = self._holds(bucket)
        if backend is None:
            return self._fallback.get(bucket, key)
        found = backend.get_object(bucket, key)
        if found is None:
            raise StoreError(f"NoSuchKey: s3://{bucket}/{key}")
        return found.value

    def put(self, bucket: str, key: str, body: bytes | memoryview) -> None:
        backend = self._holds(bucket)
        if backend is None:
            return self._fallback.put(bucket, key, body)
        if len(body) <= SPOOL_LIMIT:
            backend.put_object(bucket, key, body)
            return None
        # moto keeps an object in a SpooledTemporaryFile that fills an in-memory buffer first and copies
        # it to disk once it is too big: two extra copies of a 100 MB output file, a fifth of a job's
        # cost. Create the object empty, move its spool to disk, then write the body once.
        stored = backend.put_object(bucket, key, b"")
        spool = getattr(stored, "_value_buffer", None)
        if spool is not None and hasattr(spool, "rollover"):
            spool.rollover()
        stored.value = body
        return None
