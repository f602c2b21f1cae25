"""The bearer token of ``[http] token_file`` and who may do what with it.

Write actions (retry) and STOW-RS need ``Authorization: Bearer <token>``; reads (health,
metrics, the API's GETs and the status page) are open when the server listens on a loopback
address and need the token too otherwise. Without a token (no ``token_file``, or a missing or
empty one) what needs it is refused with 403. The token is compared in constant time
(:func:`hmac.compare_digest`), re-read when its file changes, and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
from pathlib import Path

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``[http] host``) is a loopback address or ``localhost``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 2.1), or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TokenFile:
    """The token held in a file, re-read when the file changes (a rotated token needs no
    restart).

    Parameters
    ----------
    path : pathlib.Path or None
        ``[http] token_file``; None: no token, so what needs one is refused.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._token: bytes | None = None
        self._warned = False

    def _read(self) -> bytes | None:
        """The current token (stripped), or None when there is none; cached by the file's
        inode, size and modification time."""
        if self.path is None:
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            with self._lock:
                self._stamp, self._token = None, None
            return None
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if stamp != self._stamp:
                try:
                    token = self.path.read_bytes().strip()
                except OSError:
                    token = b""
                self._stamp, self._token = stamp, token or None
                if self._token is not None:
                    self._warned = False
            return self._token

    @property
    def available(self) -> bool:
        """Whether there is a token, so that write actions and STOW-RS can be allowed."""
        return self._read() is not None

    def matches(self, presented: str | None) -> bool:
        """Whether ``presented`` is the token (constant-time); False when there is none."""
        token = self._read()
        if token is None or presented is None:
            return False
        return hmac.compare_digest(token, presented.strip().encode("utf-8", "replace"))

    def warn_if_missing(self) -> None:
        """Log (once until a token appears) that write actions and STOW-RS are refused."""
        if self._read() is not None or self._warned:
            return
        self._warned = True
        where = "no [http] token_file is configured" if self.path is None else (
            f"the token file {self.path} is missing or empty")
        logger.warning("HTTP: %s: retry and STOW-RS are refused (403)", where)
