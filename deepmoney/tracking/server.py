"""Finding and reaching the MLflow tracking server, for every stage that tracks.

Training and evaluation degrade gracefully when MLflow is down (they keep everything in their
output directory and can be synced later, `deepmoney track sync`). The registry cannot: a
registration or promotion that half-happened is worse than one that did not happen, so `connect`
turns an unreachable server into a one-line error before anything is changed.
"""

from __future__ import annotations

from typing import Any

from deepmoney import env
from deepmoney.config import MlflowConfig, hide_passwords
from deepmoney.errors import UserError


def tracking_uri(config: MlflowConfig) -> str | None:
    """The configured tracking URI, else MLFLOW_TRACKING_URI, else None (no tracking)."""
    return config.tracking_uri or env.get(env.MLFLOW_TRACKING_URI)


def reachable(uri: str, timeout: float) -> str | None:
    """None when an http(s) tracking server answers its health check (or the URI is a local store), else why not."""
    if not uri.startswith(("http://", "https://")):
        return None
    import requests

    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as exc:
        return type(exc).__name__
    return None if response.ok else f"HTTP {response.status_code}"


def configure_client(config: MlflowConfig) -> None:
    """Bound how long MLflow's own HTTP calls may wait and retry, keep its links off stdout (unless set otherwise)."""
    env.set_default(env.MLFLOW_HTTP_REQUEST_TIMEOUT, str(int(config.timeout)))
    env.set_default(env.MLFLOW_HTTP_REQUEST_MAX_RETRIES, "2")
    env.set_default(env.MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT, "true")  # "View run …" lines would reach stdout


def connect(config: MlflowConfig, what: str) -> Any:
    """An `MlflowClient` for a server that answers, or a UserError saying what to fix (`what`: the action)."""
    uri = tracking_uri(config)
    if not uri:
        raise UserError(
            f"cannot {what}: no MLflow tracking server; set MLFLOW_TRACKING_URI or train.mlflow.tracking_uri"
        )
    configure_client(config)
    problem = reachable(uri, config.timeout)
    if problem:
        raise UserError(f"cannot {what}: the MLflow server at {hide_passwords(uri)} does not answer ({problem}); "
                        "nothing was changed")  # fmt: skip
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def mlflow_error(exc: Exception) -> str:
    """The first line of an MLflow exception's message, without its error-code prefix noise (nor URL passwords)."""
    message = getattr(exc, "message", None) or str(exc)
    return hide_passwords(message.strip().splitlines()[0][:300]) if message else type(exc).__name__
