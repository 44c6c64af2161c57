"""What the admin commands (status, get-attr, set-attr, add-node) share."""

from __future__ import annotations

import logging
from typing import Any


def quiet_transport() -> None:
    """Unless the operator asked for more: a command reports a refused or unreachable peer in
    its own one line, so the transport's warning about it would only repeat it."""
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        logging.getLogger("vstore.net").setLevel(logging.ERROR)


def mds_link(config: Any, name: str, *, role: str = "admin", **kwargs: Any) -> Any:
    """An MdsLink (not started) to the cluster of a client or node ``config``."""
    from vstore.client.factory import client_auth
    from vstore.client.mds_link import MdsLink, client_node_id
    auth = client_auth(cluster_id=config.cluster.id, secret_file=config.cluster.secret_file, role=role,
                       frame_auth=config.net.frame_auth, node_id=client_node_id(name))
    return MdsLink([(a.host, a.port) for a in config.cluster.mds], auth, **kwargs)


def restore_dir(data: Any, created: bool) -> None:
    """Undo a command that failed half way: ``data`` as it was before, absent (``created``)
    or empty (it had to be empty to be used)."""
    import shutil
    if created:
        shutil.rmtree(data, ignore_errors=True)
    else:
        for child in data.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
