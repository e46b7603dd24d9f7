"""The run's identity: one id, and the labels every object the suite creates carries.

The labels are what makes cleanup provable: `kubectl get all,ns,cm -A -l k8s-gpu-acceptance/run-id=<id>`
lists everything a run made, and an interrupted run's leftovers can be deleted by label.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets

import pytest

MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "k8s-gpu-acceptance"
RUN_ID_KEY = "k8s-gpu-acceptance/run-id"
ROLE_KEY = "k8s-gpu-acceptance/role"
RUN_ID_ENV = "GPU_ACCEPTANCE_RUN_ID"
_RUN_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")


def new_run_id(now: dt.datetime | None = None) -> str:
    """Sortable and unique: UTC time to the second plus 6 random hex digits."""
    moment = now or dt.datetime.now(dt.timezone.utc)
    return f"{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def run_id_from_env(environ: dict[str, str] | None = None) -> str:
    """A CI job may pass its own id (to correlate with its logs); it must fit in a label and a name."""
    env = os.environ if environ is None else environ
    given = env.get(RUN_ID_ENV)
    if not given:
        return new_run_id()
    if not _RUN_ID.match(given):
        raise pytest.UsageError(
            f"{RUN_ID_ENV}={given!r}: a run id is 1-40 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return given


def run_labels(run_id: str, role: str | None = None) -> dict[str, str]:
    """The labels on every object of this run."""
    labels = {MANAGED_BY_KEY: MANAGED_BY_VALUE, RUN_ID_KEY: run_id}
    if role:
        labels[ROLE_KEY] = role
    return labels


def run_selector(run_id: str) -> str:
    """Label selector matching everything this run created."""
    return f"{MANAGED_BY_KEY}={MANAGED_BY_VALUE},{RUN_ID_KEY}={run_id}"
