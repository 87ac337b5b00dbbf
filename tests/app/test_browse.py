"""Browsing outputs never leaves the storage root."""

from __future__ import annotations

import os

import pytest
from logic import browse

from toolkit.data import storage


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "store"
    (root / "runs" / "r1").mkdir(parents=True)
    (root / "runs" / "r1" / "record.json").write_text("{}")
    sibling = tmp_path / "store2"
    sibling.mkdir()
    (sibling / "secret.txt").write_text("secret")
    (tmp_path / "outside.txt").write_text("outside")
    return root


@pytest.mark.parametrize(
    "relative",
    [
        "../outside.txt",
        "runs/../../outside.txt",
        "runs/r1/../../../outside.txt",
        "%2e%2e/outside.txt",
        "%2E%2E%2Foutside.txt",
        "..%2foutside.txt",
        "%252e%252e%252foutside.txt",  # double-encoded
        "%25252e%25252e%25252foutside.txt",  # triple-encoded
        "/etc/passwd",
        "%2fetc%2fpasswd",
        "~/secret",
        "file:///etc/passwd",
        "s3://other-bucket/key",
        "C:/Windows/win.ini",
        "..\\outside.txt",
        "runs/r1/record.json\x00.png",
        "",
        "   ",
        "./.",
    ],
)
def test_resolve_output_refuses_paths_that_leave_the_root(tree, relative):
    with pytest.raises(browse.OutsideRoot, match="refused"):
        browse.resolve_output(str(tree), relative)


def test_resolve_output_accepts_paths_under_the_root(tree):
    url = browse.resolve_output(str(tree), "runs/r1/record.json")
    assert url == storage.join(str(tree), "runs", "r1", "record.json")
    assert browse.resolve_output(str(tree), "./runs//r1/record.json") == url
    assert browse.read_output(str(tree), url) == b"{}"


def test_a_symlink_out_of_a_local_root_is_refused(tree, tmp_path):
    os.symlink(tmp_path / "outside.txt", tree / "runs" / "link.txt")
    os.symlink(tmp_path, tree / "runs" / "up")
    for relative in ("runs/link.txt", "runs/up/outside.txt"):
        with pytest.raises(browse.OutsideRoot, match="link"):
            browse.resolve_output(str(tree), relative)
    url = storage.join(str(tree), "runs", "link.txt")
    with pytest.raises(browse.OutsideRoot):
        browse.read_output(str(tree), url)


def test_a_symlink_inside_the_root_is_fine(tree):
    os.symlink(tree / "runs" / "r1" / "record.json", tree / "runs" / "alias.json")
    assert browse.read_output(str(tree), browse.resolve_output(str(tree), "runs/alias.json"))


@pytest.mark.parametrize(
    "url",
    [
        "{root}2/secret.txt",  # sibling folder sharing the root's prefix
        "{root}/../outside.txt",
        "{root}/runs/%2e%2e/%2e%2e/outside.txt",
        "/etc/passwd",
        "relative/path",
        "s3://bucket/prefix/x",
        "{root}/runs/./r1/record.json",
    ],
)
def test_check_url_refuses_record_urls_outside_a_local_root(tree, url):
    with pytest.raises(browse.OutsideRoot):
        browse.check_url(str(tree), url.format(root=tree))


def test_check_url_for_an_object_store_root():
    root = "s3://bucket/prefix"
    assert (
        browse.check_url(root, "s3://bucket/prefix/runs/a.json") == "s3://bucket/prefix/runs/a.json"
    )
    for url in (
        "s3://bucket/prefix2/runs/a.json",
        "s3://bucket/other/a.json",
        "s3://bucket/prefix/../other/a.json",
        "s3://bucket/prefix/%2e%2e/other/a.json",
        "gs://bucket/prefix/a.json",
    ):
        with pytest.raises(browse.OutsideRoot):
            browse.check_url(root, url)
    assert browse.resolve_output(root, "runs/a.json") == "s3://bucket/prefix/runs/a.json"
    with pytest.raises(browse.OutsideRoot):
        browse.resolve_output(root, "../prefix2/a.json")


def test_relative_path(tree):
    url = storage.join(str(tree), "runs", "r1", "record.json")
    assert browse.relative_path(str(tree), url) == "runs/r1/record.json"
