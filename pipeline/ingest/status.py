"""What an ingest workspace still owes, in lines a user reads (``changeflow ingest --status``)."""

from __future__ import annotations

from pipeline.ingest.lease import read_lease
from pipeline.ingest.state import IngestState, pending_groups
from pipeline.prepare.inbox import Workspace


def status_lines(workspace: Workspace, max_attempts: int) -> list[str]:
    """Pending groups with their last error, waiting scenes, given-up groups and passes holding claims.

    Args:
        workspace: the ingestion workspace.
        max_attempts: the config's ``max_attempts`` (shown as "attempt n of max").

    Returns:
        One line per heading and item; a single line saying so when nothing is pending.

    Raises:
        json.JSONDecodeError: the state file is not valid JSON.
    """
    data = IngestState(workspace).read()
    lines = []
    pending = pending_groups(data)
    if pending:
        lines.append("pending groups (retried by the next pass):")
        lines += [f"  {name}: {', '.join(info['scenes'])} (attempt {info['attempts']} of {max_attempts}): {info['error']}"
                  for name, info in pending.items()]
    if data["waiting"]:
        lines.append("waiting scenes (in the archive until their group is complete):")
        lines += [f"  {scene}: {reason}" for scene, reason in sorted(data["waiting"].items())]
    if data["given_up"]:
        lines.append(f"given up (scenes in {workspace.rejected}, drop them again to retry):")
        lines += [f"  {name}: {', '.join(info['scenes'])} after {info['attempts']} attempts: {info['error']}"
                  for name, info in sorted(data["given_up"].items())]
    claims = sorted(p for p in workspace.claims.iterdir() if p.is_dir()) if workspace.claims.is_dir() else []
    if claims:
        lines.append("claimed by passes (a stopped pass's claims go back to the inbox on the next pass):")
        for folder in claims:
            lease = read_lease(folder)
            holder = f"pid {lease.pid} on {lease.host}" if lease is not None else "no lease"
            names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
            lines.append(f"  {folder.name} ({holder}): {', '.join(names) or 'nothing'}")
    return lines or ["nothing pending: every claimed scene is archived, rejected or set aside as a duplicate"]
