"""One connection to a cluster, as a kubeconfig context describes it, and
what the API's errors mean to the launcher.

The kubeconfig is the one ``kubectl`` would use (``$KUBECONFIG``, else
``~/.kube/config``), read when the adapter is made; without a context and
without a usable file, a launcher running in a pod uses its service
account (the in-cluster configuration).
"""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import dataclass
from typing import Any

from nodepool.drivers.base import DriverError, LaunchError, NotFound, QuotaError

log = logging.getLogger("nodepool.drivers.kubernetes")

# API calls on loopback answer in milliseconds; a real API server within
# seconds. A call that hangs must not hold an executor thread forever.
REQUEST_TIMEOUT = (10.0, 60.0)


class AlreadyExists(DriverError):
    statsd_key = "error.unknown"


@dataclass
class Cluster:
    """The API clients of one context, and the facts about it that a node's
    connection data repeats (server URL, TLS, CA, the context's own token)."""

    api: Any                  # kubernetes.client.ApiClient
    core: Any                 # CoreV1Api
    rbac: Any                 # RbacAuthorizationV1Api
    custom: Any               # CustomObjectsApi (OpenShift's project API)
    context: str | None
    host: str
    verify_ssl: bool
    ca_crt: str | None        # base64 of the cluster CA's PEM, if the config has it
    token: str | None         # the context's bearer token, if it uses one


def kubeconfig_path() -> str:
    # Read at each connect (the client library reads $KUBECONFIG once, at import).
    return os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


def connect(context: str | None, pool_size: int) -> Cluster:
    """The clients for ``context``; raises ``ValueError`` saying what is wrong
    with the configuration."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException
    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig_path(), context=context,
                                client_configuration=configuration,
                                persist_config=False)
    except (ConfigException, OSError) as exc:
        if context is not None:
            raise ValueError(f"context {context!r} of {kubeconfig_path()}: {exc}") \
                from None
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as inner:
            raise ValueError(f"no usable kubeconfig ({exc}) and not in a cluster "
                             f"({inner})") from None
    configuration.connection_pool_maxsize = pool_size
    api = client.ApiClient(configuration)
    return Cluster(
        api=api, core=client.CoreV1Api(api), rbac=client.RbacAuthorizationV1Api(api),
        custom=client.CustomObjectsApi(api), context=context,
        host=configuration.host, verify_ssl=bool(configuration.verify_ssl),
        ca_crt=_ca_of(configuration), token=_token_of(configuration))


def _token_of(configuration) -> str | None:
    header = configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
    parts = (header or "").split()
    return parts[-1] if parts else None


def _ca_of(configuration) -> str | None:
    path = configuration.ssl_ca_cert
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return base64.b64encode(handle.read()).decode()
    except OSError as exc:
        log.warning("Cannot read the cluster CA %s: %s", path, exc)
        return None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an API error (None: not an answer from the API)."""
    from kubernetes.client.exceptions import ApiException
    return exc.status if isinstance(exc, ApiException) else None


def translate(exc: BaseException, what: str) -> BaseException:
    """The driver error an API error means: gone, refused for quota, or a
    plain launch failure (others are returned unchanged)."""
    status = status_of(exc)
    if status is None:
        return exc
    body = getattr(exc, "body", None) or ""
    message = f"{what}: {status} {_message(body) or getattr(exc, 'reason', '')}"
    if status == 404:
        return NotFound(message)
    if status == 409:
        return AlreadyExists(message)
    if status == 403 and "exceeded quota" in str(body):
        return QuotaError(message)
    return LaunchError(message)


def _message(body: Any) -> str:
    import json
    try:
        return str(json.loads(body).get("message") or "")
    except (ValueError, AttributeError, TypeError):
        return ""


def call(what: str, function, *args, **kwargs):
    """One API call with a bounded wait; errors translated (see translate)."""
    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
    try:
        return function(*args, **kwargs)
    except Exception as exc:
        translated = translate(exc, what)
        if translated is exc:
            raise
        raise translated from None


def gone(what: str, function, *args, **kwargs) -> bool:
    """Whether a read finds nothing (404); other errors raise."""
    try:
        call(what, function, *args, **kwargs)
    except NotFound:
        return True
    return False
