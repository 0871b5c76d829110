"""Job inputs and outputs go straight into the endpoint's moto backend, and read back like any S3 object."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from emulator.storage import SPOOL_LIMIT, MotoStore, S3Store, StoreError


@pytest.fixture
def store(clients) -> MotoStore:
    return MotoStore(lambda: s3_backends[DEFAULT_ACCOUNT_ID]["aws"], S3Store(lambda: clients["s3"]))


@pytest.mark.parametrize("size", [1_000, SPOOL_LIMIT + 12_345])
def test_a_stored_output_reads_back_over_s3_with_its_size_and_etag(clients, store: MotoStore, size: int):
    s3 = clients["s3"]
    bucket = f"store-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    body = bytes(range(256)) * (size // 256) + b"\n" * (size % 256)
    store.put(bucket, "out/a.jsonl.out", memoryview(body))
    got = s3.get_object(Bucket=bucket, Key="out/a.jsonl.out")
    assert got["Body"].read() == body and got["ContentLength"] == size
    assert got["ETag"].strip('"') == hashlib.md5(body).hexdigest()
    assert store.get(bucket, "out/a.jsonl.out") == body
    assert store.listing(bucket, "out/a.jsonl.out") == [("out/a.jsonl.out", size)]


def test_missing_objects_and_buckets_are_store_errors(clients, store: MotoStore):
    bucket = f"store-{uuid.uuid4().hex[:8]}"
    clients["s3"].create_bucket(Bucket=bucket)
    with pytest.raises(StoreError):
        store.get(bucket, "nothing-here.jsonl")
    with pytest.raises(StoreError):
        store.get("no-such-bucket-anywhere", "a.jsonl")  # not in the backend: asked over S3, refused there
    assert store.listing(bucket, "in/") == []
