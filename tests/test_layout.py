"""The package boundaries, as declared in pyproject.toml's import-linter contracts.

Nothing on the serving side (models.serving, models.evaluation, models.datasets, worker,
dicom_io) may import PyTorch or the training code, so that ``make run`` serves from the base
install; models never reach up into the service. ``make lint`` checks the same contracts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "lint-imports (import-linter) is part of the [test] extra"
    return subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contracts_hold() -> None:
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_a_torch_import_on_the_serving_side_breaks_the_contract(tmp_path: Path) -> None:
    """The contract is not vacuous: a copy of the tree with one torch import fails it."""
    copy = tmp_path / "repo"
    for name in ("models", "worker", "dicom_io"):
        shutil.copytree(REPO / name, copy / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    findings = copy / "models" / "serving" / "findings.py"
    findings.write_text(findings.read_text() + textwrap.dedent("""

        def _oops() -> None:
            import torch  # noqa: F401
        """))
    proc = _lint_imports(copy)
    assert proc.returncode != 0
    assert "models.serving.findings -> torch" in proc.stdout
