"""What the ``ossa`` commands print when they fail (shared by :mod:`worker.cli` and
:mod:`worker.admin`, which the CLI imports lazily)."""

from __future__ import annotations

import sys


def fail(message: str, code: int = 2) -> int:
    """Print ``ossa: error: <message>`` on standard error; return the exit status ``code``."""
    print(f"ossa: error: {message}", file=sys.stderr)
    return code
