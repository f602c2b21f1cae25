"""Values from the wire made safe for a log line.

UIDs, AE titles and transfer syntaxes that a peer sent are logged (never patient data: see
the brief's rule and ``tests/logscan.py``), and a hostile one must neither forge a log
line (a line break) nor corrupt a terminal (control characters). :func:`printable` is the
one function every module uses for that.
"""

from __future__ import annotations

#: ASCII control characters as ``\\xNN`` (backslashreplace leaves them as they are).
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def printable(value: str) -> str:
    """``value`` for a log line: printable ASCII as it is, any other character escaped
    (``\\x00``, ``\\u00e9``), so that a hostile value cannot forge or break a log line."""
    if value.isascii() and value.isprintable():
        return value
    return value.encode("ascii", "backslashreplace").decode("ascii").translate(_CONTROL)
