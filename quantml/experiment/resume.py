"""Resumable train jobs: the identity of a job's configuration, and ``resume=true``'s skip.

A train job's identity (tag ``quantml.run_identity`` on its parent run) is a short hash of its
resolved config without what does not change the experiment: ``resume`` itself, ``run_name``,
``print_report``, the store's address and lease (``tracking.uri``, ``tracking.lease_s``), output
folders and anything Hydra's runtime fills in (``hydra.*``, ``${hydra:...}`` values). With
``resume=true`` a job whose identity already has a FINISHED parent run in its experiment is
skipped; FAILED and KILLED ones run again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from quantml.tracking.callbacks import SKIPPED_JOBS_ENV

# keys (dotted, from the root) left out of the identity
IDENTITY_EXCLUDED = ("resume", "run_name", "print_report", "tracking.uri", "tracking.lease_s", "hydra")
OUTPUT_LEAVES = ("output_dir", "sweep_dir")  # output folders, wherever they sit
IDENTITY_CHARS = 16


_RUNTIME = "<hydra runtime>"  # stands in for a ${hydra:...} value: never resolved, left out


def _identity_tree(cfg: DictConfig | Mapping) -> dict:
    """The resolved config without the keys that do not change the experiment."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))

    def blank_runtime(value):  # ${hydra:...} resolves only inside a job, to where it writes
        if isinstance(value, Mapping):
            return {k: blank_runtime(v) for k, v in value.items() if str(k) != "hydra"}
        if isinstance(value, list):
            return [blank_runtime(v) for v in value]
        if isinstance(value, str) and "${hydra:" in value.replace(" ", ""):
            return _RUNTIME
        return value

    resolved = OmegaConf.to_container(
        OmegaConf.create(blank_runtime(OmegaConf.to_container(node, resolve=False))), resolve=True
    )

    def prune(value, path: str):
        if not isinstance(value, Mapping):
            return value
        out = {}
        for key, item in value.items():
            full = f"{path}.{key}" if path else str(key)
            if full in IDENTITY_EXCLUDED or str(key) in OUTPUT_LEAVES or item == _RUNTIME:
                continue
            out[str(key)] = prune(item, full)
        return out

    return prune(resolved, "")


def run_identity(cfg: DictConfig | Mapping) -> str:
    """The job's identity: sha256 (first 16 hex digits) of the pruned resolved config as canonical JSON."""
    text = json.dumps(_identity_tree(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:IDENTITY_CHARS]


def finished_run(tracking_uri: str, experiment: str, identity: str) -> str | None:
    """The id of the newest FINISHED parent run of ``experiment`` with ``identity``, or None.
    Prepares the store first, which also ends FAILED the runs of jobs that died (expired leases)."""
    from quantml.tracking.reader import RunReader
    from quantml.tracking.writer import RunWriter

    writer = RunWriter.prepare(tracking_uri, experiment)
    found = RunReader(client=writer.client).finished_with_identity(identity, writer.experiment_id)
    return found.run_id if found is not None else None


def skip_if_finished(cfg: DictConfig, job: str) -> str | None:
    """With ``resume=true``: when this job's identity already FINISHED, print
    ``skipped: <job> already FINISHED as run <id>`` (``job``: its overrides), record it for the
    sweep's summary and return that run id (the caller returns without creating a run); else None."""
    if not cfg.get("resume", False):
        return None
    from quantml.tracking.store import resolve_tracking_uri

    run_id = finished_run(resolve_tracking_uri(cfg.tracking.get("uri")), cfg.tracking.experiment, run_identity(cfg))
    if run_id is None:
        return None
    job = " ".join(job.split()) or "(no overrides)"
    print(f"skipped: {job} already FINISHED as run {run_id}", flush=True)
    path = os.environ.get(SKIPPED_JOBS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{job}\t{run_id}\n")
    return run_id
