"""The `changeflow` command line: one YAML config per run, rich progress, clear errors."""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from flows.interrupt import stop_cleanly
from flows.review import review_app
from pipeline.config import DetectConfig, IngestConfig, PrepareConfig, RunConfig, TrainConfig, load_config
from pipeline.errors import ChangeflowError
from pipeline.io.write_errors import folder_or_creatable

# No telemetry from the embedded Prefect server: machines may have no network.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The embedded server needs more than Prefect's 20 s to start on a loaded 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(
    help="changeflow: GF-2 / GF-3 / Sentinel-2 scenes in, georeferenced change maps out.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)
RESUME = "rerun the same command to resume"  # said on Ctrl-C (flows.interrupt)
debug = False  # --debug / CHANGEFLOW_DEBUG=1: an error's traceback is printed before its line


@contextmanager
def user_errors() -> Iterator[None]:
    """End the command on an error the user can fix: its message, exit code 2, no traceback (but with --debug)."""
    try:
        yield
    except ChangeflowError as exc:
        show_traceback()
        # One line however long (no wrapping), and a name such as '[red]' in it is shown, not read as markup.
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(code=2) from None


def show_traceback() -> None:
    """With --debug, the traceback of the exception being handled (it runs from the command into the flow)."""
    if debug:
        typer.echo(traceback.format_exc(), err=True, nl=False)


def _not_a_user_error(record: logging.LogRecord) -> bool:
    """Drops Prefect's record of a ChangeflowError raised in a flow or task (logged with its traceback):
    the CLI prints that error as one line, and with --debug prints the whole traceback once."""
    return not (record.exc_info and isinstance(record.exc_info[1], ChangeflowError))


@app.callback()
def main(
    debug_option: bool = typer.Option(
        False, "--debug", envvar="CHANGEFLOW_DEBUG", help="Print the traceback of an error before its line."
    ),
) -> None:
    """Run a pipeline stage from a YAML config."""
    global debug
    debug = debug_option
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_not_a_user_error)


@app.command()
def prepare(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config: scene list or inbox."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (tiles, catalog.gpkg, report)."),
    dask_address: str | None = typer.Option(
        None, "--dask-address", help="Run the per-group work on this Dask scheduler (tcp://HOST:PORT)."
    ),
) -> None:
    """Catalog, group, co-register and tile scenes into a leakage-free train/val/test split."""
    with user_errors():
        folder_or_creatable(out, "--out")
        load_config(config, PrepareConfig)
        from flows.prepare import run_prepare

        with stop_cleanly(RESUME):
            report = run_prepare(config, out, dask_address=dask_address, progress=True)
    splits = ", ".join(
        f"{name} {info['tiles']}" + (f" ({info['share']:.0%}, asked {info['requested']:.0%})" if info["share"] is not None else "")
        for name, info in report["splits"].items()
    )
    console.print(f"[green]prepared[/] {out}: tiles {splits}")
    for name, problem in {**report["groups_failed"], **report["scenes_refused"], **report["scenes_not_grouped"], **report["images_refused"]}.items():
        console.print(f"[yellow]warning:[/] {name}: {problem}")
    for name, note in report["images_uncorrected"].items():
        console.print(f"note: {name}: {note}")
    for note in report["notes"]:
        console.print(f"note: {note}")
    console.print(f"index: {out / 'catalog.gpkg'}  report: {out / 'prepare_report.json'}")


@app.command()
def synthetic(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the scenes and scenes.yaml."),
    size: int = typer.Option(2048, help="Side of the optical t1 image in pixels (4 m)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same files."),
) -> None:
    """Write a synthetic GF-2 / GF-3 / Sentinel-2 scene group with a change label (demo, tests)."""
    from pipeline.synthetic.scenes import write_synthetic_group

    group = write_synthetic_group(out, size=size, seed=seed)
    for role, path in group.paths.items():
        console.print(f"{role:>5}: {path}")
    console.print(f"scene list: {group.scene_list} (change fraction {group.change_fraction:.3f})")


@app.command()
def xbd(
    source: Path = typer.Argument(..., help="xBD folder with images/ and labels/ (e.g. xbd-joplin/tier3)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the scene rasters and xbd_scenes.yaml."),
    pair: list[str] | None = typer.Option(None, "--pair", help="Only these pairs (repeatable)."),
) -> None:
    """Turn xBD pairs (building polygons with damage levels) into semantic change scenes for prepare."""
    from pipeline.learn.xbd import XBD_CLASSES, write_xbd_scenes

    with user_errors():
        scene_list = write_xbd_scenes(source, out, pairs=pair or None)
    console.print(f"classes: {', '.join(f'{k} {name}' for k, name in enumerate(XBD_CLASSES))}")
    console.print(f"scene list: {scene_list}")


@app.command("train")
def train_command(
    config: Path = typer.Option(..., "--config", "-c", help="YAML training config."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, metrics.csv, TensorBoard."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt exactly."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda (overrides the config)."),
) -> None:
    """Train a change model on prepared tiles (one process, or DDP under torchrun)."""
    from flows.progress import progress_bar
    from pipeline.learn.train import distributed_from_env, train

    with user_errors():
        folder_or_creatable(out, "--out")
    try:
        settings = load_config(config, TrainConfig)
        if device is not None:
            settings = TrainConfig.model_validate({**settings.model_dump(), "device": device})
        if distributed_from_env().world_size > 1:
            # Under torchrun every rank is a plain process; the launcher owns the GPUs.
            with progress_bar("training", distributed_from_env().is_main) as advance:
                result = train(settings, out, resume=resume, progress=advance)
        else:
            from flows.train import train_flow

            with stop_cleanly(lambda: _train_resume(out)):
                result = train_flow(str(config), str(out), resume, device, progress=True)
    except ChangeflowError as exc:  # as user_errors() does: one line, however long
        show_traceback()
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(code=2) from None
    except ValidationError as exc:
        console.print(f"[bold red]error:[/] {config}: {exc}")
        raise typer.Exit(code=2) from None
    if result:
        console.print(f"[green]trained[/] {out}: best epoch {result['best_epoch']}, test {result['test']}")


def _train_resume(out: Path) -> str:
    """How to go on after Ctrl-C: from the last finished epoch, if one finished."""
    if (out / "last.pt").exists():
        return f"rerun with --resume to continue from the last finished epoch ({out / 'last.pt'})"
    return "no epoch finished; rerun the same command to start again"


@app.command()
def detect(
    config: Path = typer.Option(..., "--config", "-c", help="YAML detect config (prepared folder, checkpoint)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: COGs, GeoPackage and reports per group."),
    dask_address: str | None = typer.Option(
        None, "--dask-address", help="Detect the groups as tasks on this Dask scheduler (tcp://HOST:PORT)."
    ),
) -> None:
    """Detect changes over whole prepared scene groups: COG rasters, GeoPackage polygons, reports.

    Under torchrun every rank computes a share of each scene's blocks and rank 0 writes the outputs.
    """
    from pipeline.detect.shard import Shard

    shard = Shard.from_env()
    with user_errors():
        folder_or_creatable(out, "--out")
        settings = load_config(config, DetectConfig)
        if shard.world_size > 1 and (dask_address or settings.dask_address):
            raise ChangeflowError("give either a Dask cluster (--dask-address / dask_address) or torchrun, not both")
        from flows.detect import follow_detection, run_detect

        if shard.rank > 0:  # a plain process: rank 0 runs the flow and writes
            console.print(f"rank {shard.rank}: {follow_detection(config, out, shard)} blocks computed")
            return
        with stop_cleanly(f"{RESUME} (finished blocks are kept)"):
            summaries = run_detect(config, out, dask_address=dask_address, progress=True)
    _print_detections(summaries)


@app.command()
def run(
    config: Path = typer.Option(..., "--config", "-c", help="YAML with prepare, train and detect sections."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: prepared/, model/, detect/."),
) -> None:
    """Prepare, train, detect and evaluate from one config (the end-to-end job)."""
    with user_errors():
        folder_or_creatable(out, "--out")
        settings = load_config(config, RunConfig)
        if settings.trains:
            settings.train_config(out / "prepared")
        settings.detect_config(out / "prepared", out / "model" / "best.pt")
        from flows.run import run_flow

        with stop_cleanly(f"{RESUME} (prepared groups are kept; training starts over)"):
            report = run_flow(str(config), str(out), True)
    splits = ", ".join(f"{name} {info['tiles']}" for name, info in report["prepare"]["splits"].items())
    console.print(f"[green]tiles[/]: {splits} ({out / 'prepared' / 'catalog.gpkg'})")
    if "train" in report:  # not trained: a label-free detect.method without a train section
        console.print(f"[green]model[/]: {out / 'model' / 'best.pt'} (test {report['train']['test']})")
    _print_detections(report["detect"])


def _print_detections(summaries: dict) -> None:
    failed = False
    for name, summary in summaries.items():
        if "error" in summary:
            failed = True
            console.print(f"[bold red]{name}:[/] {summary['error']}")
            continue
        line = f"[green]{name}[/]: {summary['classes']}, {summary['n_polygons']} polygons in {summary['polygons']}"
        if "report" in summary:
            pixel = summary["metrics"]["pixel"]
            line += f"; F1 {pixel['f1']:.3f}, IoU {pixel['iou']:.3f}, kappa {pixel['kappa']:.3f}; report {summary['report']}"
        console.print(line)
    if failed:
        raise typer.Exit(code=1)


@app.command()
def ingest(
    config: Path = typer.Option(..., "--config", "-c", help="YAML ingest config (inbox, workspace, checkpoint)."),
    status: bool = typer.Option(False, "--status", help="Print the pending scenes and their last error; run nothing."),
) -> None:
    """One ingestion pass: claim new inbox scenes, prepare their groups, detect, archive."""
    from pipeline.ingest.preflight import check_ingest_config

    with user_errors():
        settings = load_config(config, IngestConfig)
        if status:
            from pipeline.ingest.status import status_lines
            from pipeline.prepare.inbox import Workspace

            for line in status_lines(Workspace(settings.workspace), settings.max_attempts):
                typer.echo(line)
            return
        check_ingest_config(settings)  # refused before anything is claimed
        from flows.ingest import ingest_flow

        with stop_cleanly("the next pass returns this pass's claimed scenes to the inbox and processes them"):
            report = ingest_flow(str(config.resolve()))
    console.print(f"claimed {len(report['claimed'])} scene(s); record {settings.workspace / 'runs' / report['run_id']}.json")
    for name, outcome in report["groups"].items():
        detail = outcome.get("error") or (f"by pass {outcome['done_by']}" if "done_by" in outcome
                                          else f"{outcome['n_polygons']} polygons in {outcome['polygons']}")
        console.print(f"group {name}: {outcome['status']} ({detail})")
    for name, reason in report["refused"].items():
        console.print(f"[yellow]refused:[/] {name}: {reason}")
    if any(outcome["status"] in ("failed", "given up") for outcome in report["groups"].values()):
        raise typer.Exit(code=1)


@app.command()
def serve(
    config: Path = typer.Option(..., "--config", "-c", help="YAML ingest config."),
    cron: str = typer.Option("*/30 * * * *", "--cron", help="Schedule of the ingest flow."),
    name: str = typer.Option("changeflow-ingest", "--name", help="Deployment name."),
) -> None:
    """Serve the ingest flow on a cron schedule (a long-running process; Ctrl-C stops it)."""
    from pipeline.ingest.preflight import check_ingest_config

    with user_errors():
        check_ingest_config(load_config(config, IngestConfig))
    from flows.ingest import ingest_flow

    ingest_flow.serve(name=name, cron=cron, parameters={"config_path": str(config.resolve())}, limit=1)


app.add_typer(review_app, name="review")

if __name__ == "__main__":
    app()
