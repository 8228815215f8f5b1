"""The package's declared layers hold, every module imports, and the serving side needs no training stack."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import deepmoney
from tests.conftest import ROOT

PACKAGE = ROOT / "deepmoney"


def test_import_linter_contracts_hold() -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_every_module_imports() -> None:
    """import-linter does not notice an import of a module that no longer exists; importing them all does."""
    failures = {}
    for info in pkgutil.walk_packages(deepmoney.__path__, "deepmoney."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # every failure is reported
            failures[info.name] = repr(exc)
    assert not failures


def test_serving_side_imports_without_the_training_stack() -> None:
    """The modules a serving image runs import with deepspeed and peft made unimportable."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('deepspeed', 'peft'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import deepmoney.serving, deepmoney.models.resolve, deepmoney.models.generate, deepmoney.models.load\n"
        "import deepmoney.llm.local, deepmoney.llm.client, deepmoney.analysis.chain, deepmoney.tracking.server\n"
        "assert not any(m.split('.')[0] in ('deepspeed', 'peft') for m in sys.modules)\n"
        "stages = ('deepmoney.train', 'deepmoney.evaluate', 'deepmoney.synth')\n"
        "assert not any(m.startswith(stages) for m in sys.modules)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")


def _environment_literals(path: Path) -> list[tuple[int, str]]:
    """String literals used as environment variable names outside env.py (os.environ[...], env.get("...") ...)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Subscript) and "environ" in ast.unparse(node.value):
            key = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            owner = ast.unparse(node.func.value)
            if ("environ" in owner or owner in ("env", "environ", "os")) and node.func.attr in (
                "get", "setdefault", "pop", "getenv"
            ):  # fmt: skip
                key = node.args[0]
        elif (
            isinstance(node, ast.Compare)
            and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)
            and any("environ" in ast.unparse(c) or ast.unparse(c) == "env" for c in node.comparators)
        ):
            key = node.left
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and _ENV_NAME.match(key.value):
            found.append((node.lineno, key.value))
    return found


def test_environment_variable_names_have_one_owner() -> None:
    """Every environment variable the package reads or sets is named in deepmoney/env.py, and only there."""
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "env.py" and path.parent == PACKAGE:
            continue
        literals = _environment_literals(path)
        if literals:
            offenders[str(path.relative_to(ROOT))] = literals
    assert not offenders


@pytest.mark.parametrize("source", ['os.environ["RANK"]', 'os.environ.get("MLFLOW_TRACKING_URI")',
                                    'env.get("PET_NNODES")', '"RANK" in os.environ'])  # fmt: skip
def test_the_environment_check_finds_literals(tmp_path: Path, source: str) -> None:
    path = tmp_path / "m.py"
    path.write_text(f"import os\nx = {source}\n")
    assert _environment_literals(path)


def test_training_without_the_train_extra_says_how_to_install_it(tmp_path: Path) -> None:
    code = (
        "import importlib.util\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n in ('deepspeed', 'peft') else real(n, *a)\n"
        "from deepmoney.cli import main\n"
        f"main(['train', '--model', 'm', '--data', 'd', '--output', {str(tmp_path / 'o')!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "install the train extra" in result.stderr and "Traceback" not in result.stderr
