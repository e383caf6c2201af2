"""Where jobs over stored images may read and write: ``--source-allow`` and its checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlaas.jobs import layout
from dlaas.jobs.sources import AllowedRoot, SourceRefused, check_allowed, parse_allowed


def test_roots_are_normalized_and_may_belong_to_one_owner(tmp_path: Path) -> None:
    roots = parse_allowed(f" s3://photos/2024 , alice=s3://photos/alice/,file://{tmp_path}/a/b/..")
    assert roots == (
        AllowedRoot("s3://photos/2024/", None),
        AllowedRoot("s3://photos/alice/", "alice"),
        AllowedRoot(f"file://{tmp_path}/a/", None),
    )
    assert parse_allowed("") == ()


@pytest.mark.parametrize("bad", ["http://x/", "s3:///nobucket/", "s3://b/a/../c/", "ftp://h/"])
def test_a_bad_root_is_refused_at_start(bad: str) -> None:
    with pytest.raises(ValueError, match="--source-allow"):
        parse_allowed(bad)


def test_an_owner_root_is_that_owners_alone() -> None:
    roots = parse_allowed("s3://shared/,alice=s3://private/alice/")
    assert check_allowed("s3://private/alice/x/", roots, "alice", folder=True)
    with pytest.raises(SourceRefused, match="allowed: s3://shared/"):
        check_allowed("s3://private/alice/x/", roots, "bob", folder=True)


@pytest.mark.parametrize(
    "url",
    [
        "s3://shared-not/x/",  # a sibling whose name starts like the root
        "s3://shared/../other/",
        "s3://shared/a/%2e%2e/b/",
        "s3://user@shared/x/",
        "s3://shared:9000/x/",
        "s3://shared/x/?endpoint=http://evil",
        "file:///etc/",
        "https://shared/x/",
    ],
)
def test_what_is_not_under_a_root_is_refused(url: str) -> None:
    with pytest.raises(SourceRefused):
        check_allowed(url, parse_allowed("s3://shared/"), "anonymous", folder=True)


def test_a_link_out_of_a_file_root_is_resolved_before_the_check(tmp_path: Path) -> None:
    (tmp_path / "allowed").mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "allowed" / "door").symlink_to(tmp_path / "secret")
    roots = parse_allowed(f"file://{tmp_path / 'allowed'}/")
    with pytest.raises(SourceRefused):
        check_allowed(f"file://{tmp_path}/allowed/door/", roots, "anonymous", folder=True)


def test_without_roots_the_refusal_says_how_to_turn_the_feature_on() -> None:
    with pytest.raises(SourceRefused, match="--source-allow"):
        check_allowed("s3://b/p/", (), "anonymous", folder=True)


def test_a_manifest_is_a_file_and_a_source_a_folder() -> None:
    roots = parse_allowed("s3://b/")
    assert check_allowed("s3://b/sets/list.txt", roots, "x", folder=False) == "s3://b/sets/list.txt"
    assert check_allowed("s3://b/sets", roots, "x", folder=True) == "s3://b/sets/"
    with pytest.raises(SourceRefused, match="folder"):
        check_allowed("s3://b/sets/", roots, "x", folder=False)


def test_a_key_has_one_image_id() -> None:
    assert layout.source_image_id("a/b.jpg") == layout.source_image_id("a/b.jpg")
    assert layout.source_image_id("a/b.jpg") != layout.source_image_id("a/b.jpeg")
    assert layout.is_job_id(layout.source_image_id("caf\u00e9 1.jpg"))
