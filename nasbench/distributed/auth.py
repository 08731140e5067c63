"""Where the Ray auth token comes from, and the HTTP header that carries it.

Ray clusters started by `nasbench cluster up` run with token auth on; every Jobs API request
needs `Authorization: Bearer <token>`. We pass the header explicitly instead of relying on
`RAY_AUTH_MODE` being set in this process, so one client can talk to several clusters.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from nasbench.distributed.dashboard import ClusterError

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


def new_token_file(path: Path) -> Path:
    """Write a fresh 256-bit token readable only by this user: the temp file is created 0600
    (`os.open` with the mode, `O_EXCL`), so no byte of it is ever readable by others, then
    renamed into place atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_hex(32))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_token(path: Path) -> str | None:
    """The token stored at `path`, or None when the file is missing or empty."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    return token or None


def find_token(cluster_token_path: Path | None = None) -> str | None:
    """The token to send, searched in Ray's own order of precedence (None if there is none).

    `cluster_token_path` is the token of the local cluster when the address is that cluster;
    it is tried after the explicit environment variables and before Ray's default file.
    """
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    if os.environ.get(TOKEN_PATH_ENV):
        path = Path(os.environ[TOKEN_PATH_ENV]).expanduser()
        token = read_token(path)
        if token is None:
            raise ClusterError(f"${TOKEN_PATH_ENV} points to {path}, which holds no token")
        return token
    candidates: list[Path] = []
    if cluster_token_path is not None:
        candidates.append(cluster_token_path)
    candidates.append(Path.home() / ".ray" / "auth_token")  # where `ray get-auth-token` puts it
    for path in candidates:
        token = read_token(path)
        if token:
            return token
    return None


def auth_headers(token: str | None) -> dict[str, str]:
    """The request headers for `token` (none when there is no token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
