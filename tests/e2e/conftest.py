"""Fixtures for end-to-end tests against a real S3 server (Swift + s3api, see swift_server.py)."""

import contextlib
import os
import sys
import uuid

import botocore.exceptions
import pytest

# So that `import swift_server` works whatever directory pytest runs from and whatever
# its import mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from swift_server import SwiftServer  # noqa: E402

_S3_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


@pytest.fixture(scope="session")
def s3server():
    """One server for the whole session; stopped at the end even if tests fail."""
    with SwiftServer() as server:
        yield server


@contextlib.contextmanager
def _fresh_bucket(server):
    name = f"t-{uuid.uuid4().hex}"
    client = server.client()
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        _delete_bucket(client, name)


@pytest.fixture
def bucket(s3server):
    """A fresh, empty bucket; emptied and deleted afterwards."""
    with _fresh_bucket(s3server) as name:
        yield name


@pytest.fixture
def bucket2(s3server):
    """A second fresh bucket, for tests that need two."""
    with _fresh_bucket(s3server) as name:
        yield name


def _delete_bucket(client, name):
    # Best effort, one step at a time: a test may leave the bucket in any state, and a
    # failed clean-up must neither hide the test's own result nor skip the later steps.
    with contextlib.suppress(*_S3_ERRORS):
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=name):
            for upload in page.get("Uploads", []):
                client.abort_multipart_upload(Bucket=name, Key=upload["Key"],
                                              UploadId=upload["UploadId"])
    with contextlib.suppress(*_S3_ERRORS):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    with contextlib.suppress(*_S3_ERRORS):
        client.delete_bucket(Bucket=name)


@pytest.fixture
def s3env(s3server):
    """Environment for a child process (our C tools) that must talk to s3server only:
    every inherited AWS_* variable (AWS_CA_BUNDLE, AWS_PROFILE, ...) is dropped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3server.env())
    return env
