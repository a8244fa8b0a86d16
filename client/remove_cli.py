"""The ``matteserve remove`` command (registered in matteserve/cli.py); the work is in batch.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from matteserve.options import OutputFormat

if TYPE_CHECKING:
    from matteserve.client.batch import Job, Outcome, Settings

DEFAULT_REPORT = "failures.jsonl"


def remove(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUT...",
            help="Image files, folders (searched recursively), globs ('photos/**/*.jpg') or @list.txt files.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the results (OUTDIR).")],
    format: Annotated[OutputFormat, typer.Option("--format", "-f", help="What to write for each image.")] = (
        OutputFormat.PNG
    ),
    background: Annotated[str | None, typer.Option(help="Background colour for jpeg, e.g. '#ffffff'.")] = None,
    quality: Annotated[int | None, typer.Option(min=1, max=100, help="JPEG/WebP quality.")] = None,
    model: Annotated[str | None, typer.Option(help="Matting model, where the gateway serves several.")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Images in flight at once.")] = 4,
    gateway: Annotated[str, typer.Option(envvar="MATTESERVE_GATEWAY", help="Gateway address.")] = "127.0.0.1:50051",
    api_key: Annotated[str | None, typer.Option(envvar="MATTESERVE_API_KEY", help="API key, if required.")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA certificate (PEM) to reach a TLS gateway.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per image, retries included.")] = 300.0,
    retries: Annotated[
        int, typer.Option(min=0, help="Retries per image on UNAVAILABLE/RESOURCE_EXHAUSTED (not: message too large).")
    ] = 8,
    report: Annotated[
        Path | None, typer.Option(help=f"JSON-lines failure report (default: OUTDIR/{DEFAULT_REPORT}).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Remove the background of many images through the gateway; a rerun finishes an interrupted job."""
    from matteserve.client import batch

    out.mkdir(parents=True, exist_ok=True)
    report_path = report or out / DEFAULT_REPORT
    stale = batch.remove_stale_partials(out)
    plan = batch.plan(inputs, out, format)
    todo = [job for job in plan.jobs if not job.output.exists()]
    skipped = len(plan.jobs) - len(todo)
    typer.echo(
        f"{len(plan.jobs)} image(s): {skipped} already done, {len(todo)} to do"
        + (f"; {len(plan.failures)} input(s) cannot be used" if plan.failures else "")
        + (f"; removed {stale} unfinished temporary file(s)" if stale else ""),
        err=True,
    )
    settings = batch.Settings(format, background, quality, model, concurrency)
    try:
        outcome = asyncio.run(_run(todo, settings, gateway, api_key, tls_ca, timeout, retries, progress))
    except KeyboardInterrupt:
        typer.echo("interrupted: finished outputs are kept; run the same command again to do the rest", err=True)
        raise SystemExit(130) from None
    failures = plan.failures + outcome.failures
    batch.write_report(report_path, failures)
    typer.echo(f"{outcome.done} written, {skipped} skipped (already there), {len(failures)} failed", err=True)
    if failures:
        typer.echo(f"failures: {report_path}", err=True)
        raise SystemExit(1)


async def _run(
    todo: list[Job],
    settings: Settings,
    gateway: str,
    api_key: str | None,
    tls_ca: Path | None,
    timeout: float,
    retries: int,
    show_progress: bool,
) -> Outcome:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from matteserve.client import TLS, AsyncClient, RetryPolicy, batch

    retry = RetryPolicy(attempts=retries + 1, max_backoff_s=10.0)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not show_progress) as bar:
        task = bar.add_task("removing", total=len(todo), rate="")

        def advance() -> None:
            bar.advance(task)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:.1f} img/s" if speed else "")

        tls = TLS(tls_ca) if tls_ca else None
        async with AsyncClient(gateway, api_key=api_key, timeout=timeout, retry=retry, tls=tls) as client:
            return await batch.run(todo, client, settings, on_done=advance)
