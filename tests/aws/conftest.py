"""Tests under tests/aws get the real-server fixtures (moto, SeaweedFS) without importing."""

from tests.aws.servers import (  # noqa: F401 - fixtures
    fixture_aws_env,
    fixture_moto,
    fixture_moto_server,
    fixture_seaweedfs,
    fixture_seaweedfs_server,
)
