"""A real S3 endpoint for the workload tests: moto's server on loopback, over HTTP.

The entrypoints run as subprocesses and reach it the way a pod reaches a bucket: by
the standard AWS variables alone. One server per session (it starts in about two
seconds); each test gets its own bucket, so no test sees another's objects.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helpers import free_port

_buckets = itertools.count()


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str
    env: dict[str, str]
    """What a subprocess needs to reach the bucket (credentials, endpoint, region)."""

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key.strip('/')}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``, straight from the server (no client cache)."""
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def put(self, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def new_bucket(endpoint: str) -> S3:
    """A bucket of its own on the server, and the environment that reaches it."""
    env = {
        "AWS_ACCESS_KEY_ID": "modelsmith-test",
        "AWS_SECRET_ACCESS_KEY": "modelsmith-test-secret",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        # Nothing of this machine's AWS setup may leak in, nor any metadata lookup.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    store = S3(endpoint, f"modelsmith-{os.getpid()}-{next(_buckets)}", env)
    store.client().create_bucket(Bucket=store.bucket)
    return store


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A fresh bucket; this process's environment points at it too (in-process reads)."""
    store = new_bucket(s3_endpoint)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return store
