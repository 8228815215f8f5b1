"""`deepmoney launch --backend local`: the torchrun launcher behind the same interface as the cluster backends.

Real runs of the tiny model under torchrun (one CPU rank): in the foreground; detached with
`--no-wait`, then attached to, its log read and followed; a second launch of a running output attaches
instead of training beside it (and `deepmoney train` on it is refused); `--cancel` stops the detached
process, torchrun and its ranks, leaving the run resumable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from deepmoney.config import load_config, overrides_from_flags
from deepmoney.data.pt import build_pt
from deepmoney.launch.local import LOCK_FILE, running_pid
from tests.conftest import SAMPLE_CORPUS, assert_clean_error, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SAMPLE_CORPUS.is_dir(), reason="sample corpus not present")]
QUIET_MLFLOW = {"MLFLOW_TRACKING_URI": "", "DEEPMONEY_TRAIN__LOG_EVERY": "5"}


@pytest.fixture(scope="module")
def pt_data(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The sample corpus packed in 128-token blocks for the tiny model."""
    out = tmp_path_factory.mktemp("launch-local") / "pt"
    config = load_config(overrides=overrides_from_flags(**{"data.block_size": 128, "data.workers": 1}))
    build_pt([str(SAMPLE_CORPUS)], str(tiny_model), str(out), config, quiet=True)
    return out


def _launch(model: Path, data: Path, output: Path, *flags: str, steps: int = 6):
    return run_cli("launch", "--backend", "local", "--stage", "pt", "--model", str(model), "--data", str(data),
                   "--output", str(output), "--gpus-per-node", "1", "--zero", "0", "--micro-batch", "2",
                   "--max-steps", str(steps), *flags, env=QUIET_MLFLOW, timeout=600)  # fmt: skip


def _processes_naming(text: str) -> list[int]:
    """Pids of live processes whose command line mentions `text` (torchrun and its ranks name the output)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def _wait_until(predicate, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_foreground_run_reports_its_result_and_a_second_launch_reuses_it(
    tmp_path: Path, tiny_model: Path, pt_data: Path
) -> None:
    output = tmp_path / "run"
    first = _launch(tiny_model, pt_data, output)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads(first.stdout)  # stdout: the result only
    manifest = json.loads((output / "manifest.json").read_text())
    assert result["kind"] == "local" and result["phase"] == "Succeeded" and result["attached"] is False
    assert result["steps"] == manifest["steps"] == 6 and result["final"] == manifest["final"]
    assert running_pid(output) is None and not (output / LOCK_FILE).exists()  # published without the lock
    again = _launch(tiny_model, pt_data, output)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["final"] == manifest["final"] and "already holds this finished run" in again.stderr
    logs = _launch(tiny_model, pt_data, output, "--logs")
    assert logs.returncode == 0 and logs.stdout.startswith("==> launcher.log <==")
    assert f"model in {manifest['final']}" in logs.stdout


def test_a_detached_run_is_attached_to_followed_and_its_result_read(
    tmp_path: Path, tiny_model: Path, pt_data: Path
) -> None:
    output = tmp_path / "run"
    started = _launch(tiny_model, pt_data, output, "--no-wait", steps=40)
    assert started.returncode == 0, started.stderr[-3000:]
    detached = json.loads(started.stdout)
    assert detached["phase"] in ("Running", "Succeeded") and detached["attached"] is False
    followed = _launch(tiny_model, pt_data, output, "--logs", "--follow", steps=40)  # until the process ends
    assert followed.returncode == 0, followed.stderr
    assert running_pid(output) is None
    assert any("40/40" in line for line in followed.stdout.splitlines()), followed.stdout[-2000:]
    ended = json.loads((output / "launcher-exit.json").read_text())
    assert ended["exit_code"] == 0 and ended["error"] is None
    attached = _launch(tiny_model, pt_data, output, steps=40)
    assert attached.returncode == 0, attached.stderr[-3000:]
    result = json.loads(attached.stdout)
    assert result["phase"] == "Succeeded" and result["steps"] == 40
    assert result["final"] == json.loads((output / "manifest.json").read_text())["final"]


def test_a_running_output_is_attached_to_never_trained_twice_and_cancel_stops_every_process(
    tmp_path: Path, tiny_model: Path, pt_data: Path
) -> None:
    output = tmp_path / "run"
    started = _launch(tiny_model, pt_data, output, "--no-wait", steps=100_000)
    assert started.returncode == 0, started.stderr[-3000:]
    pid = json.loads(started.stdout)["pid"]
    assert running_pid(output) == pid
    _wait_until(lambda: len(_processes_naming(str(output))) >= 2)  # torchrun and its rank are up
    again = _launch(tiny_model, pt_data, output, "--no-wait", steps=100_000)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"kind": "local", "output": str(output), "attached": True, "pid": pid,
                                        "phase": "Running"}  # fmt: skip
    other = _launch(tiny_model, pt_data, output, "--no-wait", steps=99)  # not this run: never attached to
    assert_clean_error(other, "other inputs or settings", "train.max_steps")
    assert other.returncode == 2
    waited = _launch(tiny_model, pt_data, output, "--timeout", "1", steps=100_000)
    assert waited.returncode == 128 and "still running after 1 s" in waited.stderr and not waited.stdout
    beside = run_cli("train", "--stage", "pt", "--model", str(tiny_model), "--data", str(pt_data), "--output",
                     str(output), "--launcher", "local", "--nproc", "1", "--zero", "0", "--micro-batch", "2",
                     "--max-steps", "100000", env=QUIET_MLFLOW)  # fmt: skip
    assert beside.returncode == 128 and f"is being trained by process {pid}" in beside.stderr
    cancelled = _launch(tiny_model, pt_data, output, "--cancel", steps=100_000)
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["cancelled"] is True
    assert running_pid(output) is None
    _wait_until(lambda: not _processes_naming(str(output)), 30)  # torchrun and the rank are gone too
    ended = json.loads((output / "launcher-exit.json").read_text())
    assert ended["exit_code"] == 143 and "launch again to resume" in ended["error"]
    assert not (output / "manifest.json").exists() and (output / "run.json").is_file()  # resumable, not finished
    assert_clean_error(_launch(tiny_model, pt_data, output, "--cancel", steps=100_000), "nothing to cancel")


def test_local_mistakes_are_reported_before_anything_starts(tmp_path: Path, tiny_model: Path) -> None:
    output = tmp_path / "run"
    missing = _launch(tiny_model, tmp_path / "no-corpus", output, "--no-wait")
    assert_clean_error(missing, "no-corpus")
    assert missing.returncode == 2 and not output.exists() and not missing.stdout
    assert_clean_error(_launch(tiny_model, tmp_path, output, "--logs"), "no local run has started there yet")
    assert_clean_error(_launch(tiny_model, tmp_path, output, "--follow"), "--follow goes with --logs")
