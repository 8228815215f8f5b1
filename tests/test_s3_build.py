"""build-pt with inputs and output on S3 (moto server on loopback, real boto3, the real CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import S3Endpoint, assert_clean_error, build_pt_cli
from tests.test_pt import make_corpus

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_corpus(s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> str:
    corpus = make_corpus(tmp_path_factory.mktemp("s3corpus"))
    client = s3_endpoint.client()
    client.create_bucket(Bucket="reports")
    for path in sorted(corpus.iterdir()):
        client.upload_file(str(path), "reports", f"2026/{path.name}")
    return "s3://reports/2026/"


def test_build_from_s3_to_s3(s3_endpoint: S3Endpoint, s3_corpus: str, tiny_model: Path, tmp_path: Path) -> None:
    client = s3_endpoint.client()
    client.create_bucket(Bucket="corpora")
    result = build_pt_cli(
        [s3_corpus], str(tiny_model), "s3://corpora/pt/v1", "--block-size", "64", "--quiet", env=s3_endpoint.env
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads(client.get_object(Bucket="corpora", Key="pt/v1/manifest.json")["Body"].read())
    assert manifest["documents"] == 7 and manifest["rejected"] == 5
    assert all(entry["etag"] for entry in manifest["inputs"])
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="corpora", Prefix="pt/v1/")["Contents"]}
    assert {f"pt/v1/{f['path']}" for f in manifest["files"]} | {"pt/v1/manifest.json"} == keys
    for key in sorted(k for k in keys if k.endswith(".parquet")):
        client.download_file("corpora", key, str(tmp_path / Path(key).name))
    import pyarrow.parquet as pq

    rows = pq.read_table(sorted(tmp_path.glob("train-*.parquet"))).num_rows
    assert rows == manifest["blocks"]
    heldout = pq.read_table(sorted(tmp_path.glob("validation-*.parquet"))).num_rows
    assert heldout == manifest["heldout"]["documents"] >= 1
    again = build_pt_cli(
        [s3_corpus], str(tiny_model), "s3://corpora/pt/v1", "--block-size", "64", "--quiet", env=s3_endpoint.env
    )
    assert again.returncode == 0 and "reused" in again.stdout


def test_tokenizer_from_s3(s3_endpoint: S3Endpoint, s3_corpus: str, tiny_model: Path, tmp_path: Path) -> None:
    client = s3_endpoint.client()
    client.create_bucket(Bucket="models")
    for path in tiny_model.iterdir():
        client.upload_file(str(path), "models", f"tiny/{path.name}")
    out = tmp_path / "out"
    result = build_pt_cli(
        [s3_corpus], "s3://models/tiny", str(out), "--block-size", "64", "--quiet", env=s3_endpoint.env
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "manifest.json").read_text())["tokenizer"]["uri"] == "s3://models/tiny"


def test_missing_input_bucket_is_recorded(
    s3_endpoint: S3Endpoint, s3_corpus: str, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = build_pt_cli(
        [s3_corpus, "s3://no-such-bucket/x/"], str(tiny_model), str(out), "--quiet", env=s3_endpoint.env
    )
    assert result.returncode == 0, result.stderr
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").open()]
    assert any(r["path"] == "s3://no-such-bucket/x/" and "does not exist" in r["reason"] for r in rejected)


def test_missing_output_bucket_fails_before_any_work(s3_endpoint: S3Endpoint, s3_corpus: str, tiny_model: Path) -> None:
    result = build_pt_cli([s3_corpus], str(tiny_model), "s3://missing-out/pt", "--quiet", env=s3_endpoint.env)
    assert_clean_error(result, "bucket 'missing-out' does not exist")
    assert len(result.stderr.strip().splitlines()) == 1


def test_sharded_build_on_s3_writes_the_unsharded_bytes(s3_endpoint: S3Endpoint, s3_corpus: str,
                                                          tiny_model: Path) -> None:  # fmt: skip
    """Inputs, shards and the merged corpus all on S3: the merge reads each shard's tasks from the bucket."""
    from tests.conftest import run_cli

    client = s3_endpoint.client()
    client.create_bucket(Bucket="sharded")
    flags = ("--block-size", "64", "--quiet")
    env = {**s3_endpoint.env, "DEEPMONEY_DATA__RECORDS_PER_TASK": "2"}
    assert build_pt_cli([s3_corpus], str(tiny_model), "s3://sharded/whole", *flags, env=env).returncode == 0
    for k in range(3):
        built = build_pt_cli([s3_corpus], str(tiny_model), f"s3://sharded/shard-{k}", "--shard", f"{k}/3", *flags,
                             env=env)  # fmt: skip
        assert built.returncode == 0, built.stderr[-3000:]
    merged = run_cli("data", "merge-pt", "--input", *(f"s3://sharded/shard-{k}" for k in range(3)), "--output",
                     "s3://sharded/merged", *flags, env=env)  # fmt: skip
    assert merged.returncode == 0, merged.stderr[-3000:]

    def objects(prefix: str) -> dict[str, bytes]:
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="sharded", Prefix=prefix)["Contents"]]
        return {k.removeprefix(prefix): client.get_object(Bucket="sharded", Key=k)["Body"].read() for k in keys}

    whole, sharded = objects("whole/"), objects("merged/")
    assert sorted(whole) == sorted(sharded)
    assert all(whole[name] == sharded[name] for name in whole if name != "manifest.json")
    volatile = ("seconds", "created_at")
    manifests = [{k: v for k, v in json.loads(m["manifest.json"]).items() if k not in volatile}
                 for m in (whole, sharded)]  # fmt: skip
    assert manifests[0] == manifests[1] and manifests[0]["documents"] == 7


def test_the_pipelines_intake_stage_writes_its_classifier_to_an_s3_workdir(
    s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster the run's workdir is s3:// (or the claim): the intake classifier is published there whole,
    and the next run finds it by its fingerprint."""
    from deepmoney.pipeline import stages

    for name, value in s3_endpoint.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    client = s3_endpoint.client()
    client.create_bucket(Bucket="runs")
    small = {"intake": {"classifier": {"epochs": 1, "hidden_size": 32, "layers": 1, "heads": 2}}}
    result = stages.train_intake("s3://runs/r1", overrides=small)
    assert result["uri"] == "s3://runs/r1/intake-classifier" and not result["reused"]
    manifest = json.loads(client.get_object(Bucket="runs", Key="r1/intake-classifier/manifest.json")["Body"].read())
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="runs", Prefix="r1/intake-classifier/")["Contents"]}
    names = {key.removeprefix("r1/intake-classifier/") for key in keys}
    assert {"manifest.json", "metrics.json", "heldout.jsonl", "config.json", "model.safetensors"} <= names, names
    assert manifest["metrics"] == result["metrics"]
    assert stages.train_intake("s3://runs/r1", overrides=small)["reused"]
