"""`changeflow review` (the review web app of one group) and `changeflow review export` (its label)."""

from __future__ import annotations

import getpass
import json
import secrets
from pathlib import Path

import typer

from pipeline.errors import ChangeflowError

review_app = typer.Typer(
    help="Review a detection and draw change labels in a local web app; export them as a label for prepare.",
    invoke_without_command=True,
    add_completion=False,
)
REVIEW_DIR = "_review"  # DET/_review/{group}: never a group name (those start with a letter or digit)

PREPARED = typer.Option(None, "--prepared", help="The `changeflow prepare` output folder (groups/{group}/grid).")
DETECTIONS = typer.Option(None, "--detections", help="The `changeflow detect` output folder ({group}/changes.gpkg).")
GROUP = typer.Option(None, "--group", help="The group to review (may be left out when there is one).")
STORE_DIR = typer.Option(None, "--review-dir", help="Folder of the review store (default DETECTIONS/_review/GROUP).")


def _review_dir(detections: Path, group: str, review_dir: Path | None) -> Path:
    return review_dir if review_dir is not None else detections / REVIEW_DIR / group


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (e.g. a container's unnamed uid)
        return "reviewer"


def _required(prepared: Path | None, detections: Path | None) -> tuple[Path, Path]:
    if prepared is None or detections is None:
        raise ChangeflowError("give --prepared OUT and --detections DET")
    return prepared, detections


@review_app.callback()
def review(
    ctx: typer.Context,
    prepared: Path | None = PREPARED,
    detections: Path | None = DETECTIONS,
    group: str | None = GROUP,
    port: int = typer.Option(8765, "--port", help="Port of the web app."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (only this machine by default)."),
    reviewer: str = typer.Option(None, "--reviewer", help="Name recorded with each change (default: the login)."),
    review_dir: Path | None = STORE_DIR,
) -> None:
    """Start the review web app of one prepared group and its detection (Ctrl-C stops it)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from flows.cli import console, user_errors  # here: flows.cli imports this module at its top
    from pipeline.review.app import create_app
    from pipeline.review.candidates import open_store
    from pipeline.review.group import open_review_group
    from pipeline.review.tiles import TileSource

    with user_errors():
        prepared, detections = _required(prepared, detections)
        checked = open_review_group(prepared, detections, group)
        store = open_store(checked, _review_dir(detections, checked.name, review_dir))
        tiles = TileSource(checked)
    hosts = sorted({"127.0.0.1", "localhost", host})
    app = create_app(checked, store, tiles, token=secrets.token_urlsafe(24), reviewer=reviewer or _login(),
                     hosts=["*"] if host in ("0.0.0.0", "::") else hosts)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    console.print(f"review of group {checked.name}: http://{shown}:{port}/  (store {store.path}; Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@review_app.command("export")
def export(
    prepared: Path | None = PREPARED,
    detections: Path | None = DETECTIONS,
    group: str | None = GROUP,
    review_dir: Path | None = STORE_DIR,
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for review.gpkg and review_label.tif "
                                                              "(default: the review folder)."),
) -> None:
    """Write review.gpkg (layer reviewed_changes) and review_label.tif (1 change, 0 no change, 255 not reviewed)."""
    from flows.cli import console, user_errors
    from pipeline.review.candidates import STORE, open_store
    from pipeline.review.export import export_review
    from pipeline.review.group import open_review_group

    with user_errors():
        prepared, detections = _required(prepared, detections)
        checked = open_review_group(prepared, detections, group)
        folder = _review_dir(detections, checked.name, review_dir)
        if not (folder / STORE).is_file():
            raise ChangeflowError(f"{folder / STORE}: no review store (run `changeflow review` first)")
        summary = export_review(checked, open_store(checked, folder), out if out is not None else folder)
    console.print(f"[green]exported[/] {summary['gpkg']} and {summary['label']}")
    typer.echo(json.dumps({"features": summary["features"], "pixels": summary["pixels"]}))
