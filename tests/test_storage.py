"""Storage: local paths and S3 (moto server on loopback, real boto3) behind one interface."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepmoney.config import StorageConfig
from deepmoney.storage import Storage, StorageError, atomic_write_bytes
from tests.conftest import S3Endpoint, refused_url


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.json"
    atomic_write_bytes(target, b"{}")
    atomic_write_bytes(target, b'{"a": 1}')
    assert target.read_bytes() == b'{"a": 1}'
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_list_files_skips_hidden_and_sorts(tmp_path: Path) -> None:
    for name in ["b.txt", "a/c.md", ".hidden", ".staging-1/x.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    names = [Path(r.uri).relative_to(tmp_path).as_posix() for r in Storage().list_files(tmp_path)]
    assert names == ["a/c.md", "b.txt"]
    with pytest.raises(StorageError, match="no such file or directory"):
        Storage().list_files(tmp_path / "missing")


def test_publish_writes_marker_last_and_staging_is_removed(tmp_path: Path) -> None:
    storage = Storage()
    output = tmp_path / "out"
    output.mkdir()
    (output / "manifest.json").write_text("old")
    with storage.staging_dir(output) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".out.staging-")
        (staging / "data").mkdir()
        (staging / "data" / "x.parquet").write_bytes(b"1")
        (staging / "manifest.json").write_text("new")
        storage.publish_tree(staging, output)
    assert (output / "manifest.json").read_text() == "new"
    assert (output / "data" / "x.parquet").read_bytes() == b"1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_staging_left_by_a_killed_run_is_cleaned_and_a_live_one_is_kept(tmp_path: Path) -> None:
    import fcntl

    stale = tmp_path / ".out.staging-abc"
    stale.mkdir()
    (stale / ".lock").touch()
    live = tmp_path / ".out.staging-def"
    live.mkdir()
    with open(live / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running build holds it
        with Storage().staging_dir(tmp_path / "out"):
            pass
        assert not stale.exists()
        assert live.exists()
        with (
            pytest.raises(StorageError, match="another process is building"),
            Storage().staging_dir(tmp_path / "out", key="def"),
        ):
            pass
    assert live.exists(), "refusing to share must not delete the other run's directory"


def test_keyed_staging_survives_a_failure_for_a_resume(tmp_path: Path) -> None:
    storage = Storage()
    with pytest.raises(RuntimeError), storage.staging_dir(tmp_path / "out", key="k1", keep_on_error=True) as path:
        (path / "checkpoint").write_text("x")
        raise RuntimeError("crash")
    with storage.staging_dir(tmp_path / "out", key="k1", keep_on_error=True) as again:
        assert again == path and (again / "checkpoint").read_text() == "x"
    assert not path.exists()  # finished: removed


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        Storage().check_writable(tmp_path / "f")


@pytest.mark.integration
def test_s3_round_trip(s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    s3_endpoint.client().create_bucket(Bucket="roundtrip")
    storage = Storage(StorageConfig(s3_endpoint_url=s3_endpoint.url))
    storage.write_bytes("s3://roundtrip/a/one.txt", b"one")
    storage.write_bytes("s3://roundtrip/a/b/two.txt", b"two")
    refs = storage.list_files("s3://roundtrip/a")
    assert [r.uri for r in refs] == ["s3://roundtrip/a/b/two.txt", "s3://roundtrip/a/one.txt"]
    assert storage.list_files("s3://roundtrip/a/one.txt")[0].size == 3
    assert storage.read_bytes("s3://roundtrip/a/b/two.txt") == b"two"
    with storage.open_read("s3://roundtrip/a/one.txt") as stream:
        assert stream.read() == b"one"
    assert storage.exists("s3://roundtrip/a/one.txt") and not storage.exists("s3://roundtrip/a/zzz")
    staging = tmp_path / "stage"
    (staging / "data").mkdir(parents=True)
    (staging / "data" / "s.parquet").write_bytes(b"p")
    (staging / "manifest.json").write_text("{}")
    storage.publish_tree(staging, "s3://roundtrip/out")
    assert storage.read_bytes("s3://roundtrip/out/data/s.parquet") == b"p"
    local = storage.download_tree("s3://roundtrip/out", tmp_path / "down")
    assert (local / "manifest.json").read_text() == "{}"


@pytest.mark.integration
def test_s3_missing_bucket_and_key(s3_endpoint: S3Endpoint) -> None:
    storage = Storage(StorageConfig(s3_endpoint_url=s3_endpoint.url))
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        storage.list_files("s3://no-such-bucket/reports/")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        storage.check_writable("s3://no-such-bucket/out")
    s3_endpoint.client().create_bucket(Bucket="emptyish")
    with pytest.raises(StorageError, match="no objects under"):
        storage.list_files("s3://emptyish/nothing/")
    with pytest.raises(StorageError, match="no such S3 object"):
        storage.read_bytes("s3://emptyish/nothing.txt")


@pytest.mark.integration
def test_s3_access_denied_is_a_clear_error(s3_endpoint_with_auth: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUNKNOWN00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    storage = Storage(StorageConfig(s3_endpoint_url=s3_endpoint_with_auth.url, max_attempts=1))
    with pytest.raises(StorageError, match="access denied to s3://locked/reports"):
        storage.list_files("s3://locked/reports/")


def test_unreachable_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    storage = Storage(StorageConfig(s3_endpoint_url=refused_url(), max_attempts=1, s3_region="us-east-1"))
    with pytest.raises(StorageError, match="cannot reach S3"):
        storage.list_files("s3://bucket/prefix/")
