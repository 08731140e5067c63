"""Small, bounded HTTP calls to a Ray dashboard, with failures turned into one-line UserErrors.

Ray's own SDK has no request timeout, so a dead or wrong address would hang; we probe first.
"""

from __future__ import annotations

from typing import Any

from nasbench_core.errors import UserError


class ClusterError(UserError):
    """A Ray cluster cannot be reached, rejects us, or does not know what we asked for."""


def normalise_address(address: str) -> str:
    """`127.0.0.1:8265` -> `http://127.0.0.1:8265`; trailing slashes removed."""
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise ClusterError(f"Ray address {address!r} must be a dashboard URL like http://HOST:8265")
    return address


def get_json(address: str, path: str, headers: dict[str, str], timeout: float = 5.0) -> Any:
    """GET `address + path` and return its JSON, or raise ClusterError naming what went wrong."""
    import requests

    url = address + path
    try:
        response = requests.get(url, headers=headers, timeout=timeout)
    except requests.exceptions.ConnectionError:
        raise ClusterError(
            f"cannot reach a Ray dashboard at {address} (connection refused or host unknown); "
            "is the cluster up?"
        ) from None
    except requests.exceptions.Timeout:
        raise ClusterError(f"Ray dashboard at {address} did not answer within {timeout:g} s") from None
    if response.status_code == 401:
        raise ClusterError(
            f"Ray at {address} requires an auth token and none was found; "
            "set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
        )
    if response.status_code == 403:
        raise ClusterError(f"Ray at {address} rejected the auth token (wrong token for this cluster)")
    if response.status_code != 200:
        raise ClusterError(f"{url} answered HTTP {response.status_code}; is this a Ray dashboard?")
    try:
        return response.json()
    except ValueError:
        raise ClusterError(f"{url} did not answer JSON; is this a Ray dashboard?") from None


def check_ray(address: str, headers: dict[str, str]) -> str:
    """Confirm `address` is a Ray dashboard we may use; return the cluster's Ray version."""
    payload = get_json(address, "/api/version", headers)
    if not isinstance(payload, dict) or "ray_version" not in payload:
        raise ClusterError(f"{address} is not a Ray dashboard (no ray_version in /api/version)")
    return str(payload["ray_version"])


def cluster_resources(address: str, headers: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Resource name -> (used, total) across the cluster, from the dashboard's status API."""
    payload = get_json(address, "/api/cluster_status", headers)
    report = payload.get("data", {}).get("clusterStatus", {}).get("loadMetricsReport", {})
    usage = report.get("usage") or {}
    return {name: (float(used), float(total)) for name, (used, total) in usage.items()}
