"""A local Ray that only this user on this host can reach: loopback listeners and token authentication.

Ray 2.60 decides where its servers listen from the node IP address. ``ray.init(_node_ip_address="127.0.0.1")``
alone does not help: while ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` is true (the Linux default, read
from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when ``ray`` is *imported*), Ray resolves "127.0.0.1" to the host's
external address, and GCS, raylet, every worker and the driver then listen on ``*:PORT``, the metrics agent on
``0.0.0.0`` and the runtime-env agent on the external address. With the flag off, the node IP is
127.0.0.1 and every listener binds to loopback (asserted by ``tests/test_listeners.py``). Because the flag is
read at import time, :func:`start_local_ray` sets both the environment variable (for Ray's child processes)
and the already imported constant (for this process).

Token authentication (``RAY_AUTH_MODE=token``) guards every gRPC and HTTP endpoint of the instance. The token
is a fresh random value per instance, handed to Ray's processes through the ``RAY_AUTH_TOKEN`` environment
variable only: it is never written to a file (Ray's default would be ``~/.ray/auth_token``), an argument or a
log, and :func:`stop_local_ray` removes it from this process's environment again.

For an existing cluster (``ray.address=``) nothing here applies: the cluster's operator decides; see
docs/security.md.
"""
from __future__ import annotations

import os
import secrets

LOOPBACK = "127.0.0.1"
_SAVED_ENV: dict[str, str | None] = {}
_ENV_KEYS = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _set_env(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _refresh_ray_config() -> None:
    """Make this process observe the new settings even if ``ray`` was imported before they were set."""
    import ray._private.ray_constants as ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    ray_constants.ENABLE_RAY_CLUSTER = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1") not in ("0", "false")
    Config.initialize("")                         # re-reads RAY_AUTH_MODE from the environment
    AuthenticationTokenLoader.instance().reset_cache()


def start_local_ray(auth: bool = True, **init_kwargs) -> None:
    """``ray.init`` a new single-node instance bound to 127.0.0.1, with token authentication if ``auth``."""
    import ray

    _SAVED_ENV.clear()
    _SAVED_ENV.update({k: os.environ.get(k) for k in _ENV_KEYS})
    _set_env({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
              "RAY_AUTH_MODE": "token" if auth else "disabled",
              "RAY_AUTH_TOKEN": secrets.token_hex(32) if auth else None,
              "RAY_AUTH_TOKEN_PATH": None})
    _refresh_ray_config()
    try:
        ray.init(include_dashboard=False, _node_ip_address=LOOPBACK, **init_kwargs)
    except BaseException:
        stop_local_ray()
        raise


def stop_local_ray() -> None:
    """Shut the instance down and restore the environment (the token leaves this process)."""
    import ray

    ray.shutdown()
    if _SAVED_ENV:
        _set_env(dict(_SAVED_ENV))
        _SAVED_ENV.clear()
        _refresh_ray_config()
