"""Where a role's model lives: `local:MODEL_DIR`, or `http(s)://HOST/v1#MODEL_NAME`.

API keys never come from the config file or the command line: they are read from the environment
(`DEEPMONEY_<ROLE>_API_KEY`, then `OPENAI_API_KEY`) or from a mounted secret file
(`DEEPMONEY_<ROLE>_API_KEY_FILE`), and `redact` keeps them out of logs and error messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from deepmoney import env
from deepmoney.errors import UserError


@dataclass(frozen=True)
class Endpoint:
    """A parsed role endpoint."""

    role: str
    kind: str  # "local" | "http"
    target: str  # model directory, or base URL
    model: str  # model name sent to the server (the directory for local)
    api_key: str | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """How the endpoint is named in logs, manifests and records (never with its key)."""
        return f"local:{self.target}" if self.kind == "local" else f"{self.target}#{self.model}"


def parse_endpoint(role: str, spec: str, environ: dict[str, str] | None = None) -> Endpoint:
    """Parse `local:DIR` or `URL#MODEL` for `role`, resolving its API key from the environment."""
    environ = dict(os.environ if environ is None else environ)
    if spec.startswith("local:"):
        directory = spec[len("local:") :]
        if not directory:
            raise UserError(f"--{role}: expected local:MODEL_DIR, got {spec!r}")
        # One spelling per directory (`m/base`, `./m/base/` and its absolute path are the same model).
        canonical = str(Path(directory).expanduser().resolve())
        return Endpoint(role, "local", canonical, canonical)
    if spec.startswith(("http://", "https://")):
        base, sep, model = spec.partition("#")
        if not sep or not model:
            raise UserError(f"--{role}: add the model name after '#', e.g. {spec.rstrip('#')}#my-model")
        return Endpoint(role, "http", base.rstrip("/"), model, api_key=_api_key(role, environ))
    raise UserError(
        f"--{role}: expected local:MODEL_DIR or an OpenAI-compatible URL such as http://127.0.0.1:8000/v1#model, "
        f"got {spec!r}"
    )


def _api_key(role: str, environ: dict[str, str]) -> str | None:
    path = environ.get(env.role_api_key_file(role))
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"cannot read the {role} API key file {path}: {exc.strerror}") from None
    return environ.get(env.role_api_key(role)) or environ.get(env.OPENAI_API_KEY)


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every secret replaced by `***`."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
