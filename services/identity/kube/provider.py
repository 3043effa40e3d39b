"""The Kubernetes watches of one node: its pods, itself, namespaces and the KubeArmor policy kinds.

Each resource is followed by its own :class:`ListWatch` thread, so a slow or failing resource never
holds up another, nor the Docker provider.
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from services.identity.backoff import Backoff
from services.identity.kube.listwatch import ListWatch
from services.identity.kube.policies import POLICY_RESOURCES
from shared.lifecycle import Counters

__all__ = ["kube_api_client", "kube_watchers", "kube_configured"]

log = logging.getLogger("bulwark.identity.kube")
GROUP, VERSION = "security.kubearmor.com", "v1"


def kube_configured(kubeconfig: str) -> bool:
    """Whether to follow Kubernetes: a kubeconfig file is named, or we run in a pod."""
    if kubeconfig.strip().lower() in ("off", "none"):
        return False
    return bool(kubeconfig) or bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def kube_api_client(kubeconfig: str) -> Any:
    """An ApiClient from the kubeconfig file, or the in-cluster service account when none is named."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    conf = client.Configuration()
    config.load_incluster_config(client_configuration=conf)
    return client.ApiClient(conf)


def kube_watchers(api_client: Any, node: str, emit: Callable[[object], None], counters: Counters,
                  backoff: Callable[[], Backoff], watch_seconds: int = 300) -> list[ListWatch]:
    """One list-watcher per resource: pods and the Node of ``node``, namespaces, the policy kinds."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    fns: dict[str, Callable[..., Any]] = {
        "pods": functools.partial(core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={node}"),
        "nodes": functools.partial(core.list_node, field_selector=f"metadata.name={node}"),
        "namespaces": core.list_namespace,
    }
    for plural in POLICY_RESOURCES:
        fns[plural] = functools.partial(custom.list_cluster_custom_object, GROUP, VERSION, plural)
    return [ListWatch(name, fn, emit, counters, backoff(), watch_seconds) for name, fn in fns.items()]
