"""Every use of Ray's private API in nasbench, in one place.

Ray 2.60 reads two things once, at import, with no public way to change them afterwards in a
driver that imported Ray already: whether loopback may be a node address (its OSX/Windows
switch, which is how a local cluster stays on 127.0.0.1) and the auth mode/token (token auth
is on for `ray start` clusters). `ray.train` drivers started from our CLI need both changed
in-process (and `ray.init` to bind the node to loopback), so these functions reach into
`ray._private`, `ray._raylet` and `ray.init`'s private keyword. When Ray upgrades, this
module is the only one to check.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

LOOPBACK = "127.0.0.1"


def keep_ray_on_loopback() -> dict[str, str]:
    """Make Ray treat loopback as this node's address (its documented OSX/Windows switch);
    returns the `ray.init` keywords (private `_node_ip_address`) that put the node there.

    Ray reads the variable when `ray._private.ray_constants` is imported, so a process that
    imported Ray already also needs the constant itself updated.
    """
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    return {"_node_ip_address": LOOPBACK}


def use_local_cluster_token(address: str) -> None:
    """Turn on token auth for this driver, with the local cluster's token if that's the target.

    Ray caches the auth mode and token at import; re-initialising its config is what Ray
    itself does when it enables token auth for a process.
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    from nasbench.distributed.cluster import nasbench_home, read_state

    state = read_state(nasbench_home())
    if state is not None and address == state.address:
        os.environ["RAY_AUTH_TOKEN_PATH"] = state.token_path
    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def local_ray_auth() -> Iterator[None]:
    """Auth for a Ray started in this process, following the environment as it is now.

    Ray caches the auth mode at import and after `use_local_cluster_token`, so a process that
    once talked to a token cluster would start its own Ray expecting a token it never made
    (GCS: "Authentication token is missing"). With `RAY_AUTH_MODE=token` and no token given, a
    fresh token is made for this Ray's lifetime (0600 is moot: it lives only in this process's
    environment, which its workers inherit).
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    made = (os.environ.get("RAY_AUTH_MODE") == "token" and not os.environ.get("RAY_AUTH_TOKEN")
            and not os.environ.get("RAY_AUTH_TOKEN_PATH"))
    if made:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    try:
        yield
    finally:
        if made:
            os.environ.pop("RAY_AUTH_TOKEN", None)
            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()
