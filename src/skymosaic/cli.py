"""Command line: parse, call the Python API, print a summary. Nothing else lives here.

Exit codes: 0 success; 1 unexpected internal error; 2 bad usage, bad configuration, no
usable input, a pre-flight limit exceeded (output pixels, disk space, memory budget), or a
disk that filled up during the run (a rerun resumes).
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichBars
from rich.table import Table
from rich.text import Text

from skymosaic._version import __version__
from skymosaic.config import Config, ConfigError, load_config
from skymosaic.io.stack_plan import StackPlanError
from skymosaic.pipeline import (
    DiskFullError,
    NoUsableFramesError,
    PreflightError,
    Progress,
    RunResult,
    run_pipeline,
)
from skymosaic.preflight import format_duration

__all__ = ["app", "main"]

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="skymosaic: seamless, photometrically consistent mosaics from overlapping FITS frames.",
)
console = Console(stderr=True, soft_wrap=True)  # never break paths in messages


class RichProgress(Progress):
    """Progress bars with rate and ETA, one per phase.

    Items reused from an earlier run (`skip`) move the bar but not the rate: the bar's
    clock restarts after them, so the ETA is measured on real work only.
    """

    def __init__(self, bars: RichBars) -> None:
        self.bars = bars
        self.tasks: dict[str, int] = {}

    def start(self, phase: str, total: int) -> None:
        self.tasks[phase] = self.bars.add_task(phase, total=max(total, 1))

    def advance(self, phase: str, n: int = 1) -> None:
        if phase in self.tasks:
            self.bars.advance(self.tasks[phase], n)

    def skip(self, phase: str, n: int = 1) -> None:
        if phase in self.tasks:
            task = self.tasks[phase]
            done = self.bars.tasks[task].completed + n
            self.bars.reset(task, total=self.bars.tasks[task].total, completed=done)

    def end(self, phase: str) -> None:
        if phase in self.tasks:
            task = self.tasks[phase]
            self.bars.update(task, completed=self.bars.tasks[task].total)


def _setup_logging(level: str) -> None:
    logger = logging.getLogger("skymosaic")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, RichHandler)]
    handler = RichHandler(console=console, show_path=False, show_time=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


class _RateColumn(ProgressColumn):
    """Items per second over the last 30 s of work (frames, tasks or tiles of the phase)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("   -/s", style="progress.data.speed")
        return Text(f"{speed:6.2f}/s" if speed < 100 else f"{speed:6.0f}/s",
                    style="progress.data.speed")


def _bars() -> RichBars:
    return RichBars(
        TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
        disable=not console.is_terminal, speed_estimate_period=60.0,
    )


def _summary_table(result: RunResult) -> Table:
    rep = result.report
    frames, output = rep["frames"], rep["output"]
    table = Table(title="skymosaic run", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("frames found", str(frames["found"]))
    table.add_row("frames used", str(frames["used"]))
    table.add_row("frames rejected", str(len(frames["rejected"])))
    for path, reason in list(frames["rejected"].items())[:10]:
        table.add_row("", f"{Path(path).name}: {reason}")
    h, w = output["shape"]
    table.add_row("mosaic", f"{w} x {h} px, {output['channels']} channel(s), "
                            f"{output['pixel_scale_arcsec']:.3f}\"/px")
    table.add_row("coverage", f"{100 * output['coverage_fraction']:.1f}% of pixels, "
                              f"depth <= {output['max_depth']}")
    table.add_row("time", ", ".join(f"{k} {v:.2f}s" for k, v in rep["timings_s"].items()))
    reused = rep.get("resume", {}).get("reused", {})
    if reused:
        table.add_row("reused",
                      ", ".join(sorted(reused)) + " (from an earlier run; --fresh recomputes)")
    table.add_row("output", str(result.mosaic_path))
    if result.preview_path:
        table.add_row("preview", str(result.preview_path))
    table.add_row("report", str(result.out_dir / "run.json"))
    if (result.out_dir / "index.html").is_file():
        table.add_row("viewer",
                      f"{result.out_dir / 'index.html'} (skymosaic view {result.out_dir})")
    return table


def _targets_table(result: RunResult) -> Table:
    """Several targets: one line each (name, frames, centre, status, output)."""
    rep = result.report["targets"]
    table = Table(title=f"skymosaic run: {len(rep['targets'])} targets")
    for col in ("target", "frames", "centre (RA, Dec)", "status", "output"):
        table.add_column(col)
    for t in rep["targets"]:
        ra, dec = t["center_deg"]
        table.add_row(t["name"], f"{t.get('frames_used', 0)}/{t['n_frames']}",
                      f"{ra:.3f}, {dec:+.3f}", t["status"], t.get("mosaic") or t["output"])
    for name in rep.get("lone", []):
        table.add_row(name, "1", "", "left out: lone far frame", "")
    rejected = result.report["frames"]["rejected"]
    if rejected:
        table.caption = f"{len(rejected)} frame(s) rejected, see {result.out_dir / 'run.json'}"
    return table


def _fail(message: str, code: int) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}")  # messages may hold [brackets]
    return typer.Exit(code)


def _run_with_config(inputs: list[str], out: Path, config: Config, *, live=None) -> RunResult:
    _setup_logging(config.run.log_level)
    try:
        with _bars() as bars:
            progress: Progress = RichProgress(bars)
            if live is not None:  # --serve: the served page shows the phases too
                from skymosaic.report import LiveProgress

                progress = LiveProgress(live, progress)  # type: ignore[assignment]
            return run_pipeline(inputs, out, config, progress=progress)
    except (NoUsableFramesError, FileNotFoundError, StackPlanError, ConfigError,
            PreflightError) as err:
        # ConfigError here: a setting that only fails when the run starts (use_gpu = "on"
        # without a GPU); PreflightError: a limit exceeded, before anything was written
        raise _fail(str(err), EXIT_USAGE) from err
    except DiskFullError as err:
        raise _fail(f"{err}; the artifacts finished so far are kept in {out} (manifest.json): free "
                    "some space and rerun the same command to resume", EXIT_USAGE) from err


@app.command()
def run(
    inputs: Annotated[list[str], typer.Argument(help="FITS files, folders or glob patterns")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output folder")],
    config_file: Annotated[Path | None, typer.Option("--config", "-c",
                                                     help="TOML configuration")] = None,
    kernel: Annotated[str | None, typer.Option(
        help="nearest | bilinear | bicubic | lanczos3")] = None,
    pixel_scale: Annotated[float | None, typer.Option(help="output scale in arcsec/px")] = None,
    rotation: Annotated[str | None, typer.Option(help="north | auto")] = None,
    output_header: Annotated[Path | None, typer.Option(
        help="FITS header defining the output grid")] = None,
    weighting: Annotated[str | None, typer.Option(help="uniform | exposure | noise")] = None,
    wcs_dir: Annotated[list[Path] | None, typer.Option(help="folder with .wcs sidecars")] = None,
    bayer_pattern: Annotated[str | None, typer.Option(help="force RGGB/GRBG/GBRG/BGGR")] = None,
    memory_budget: Annotated[str | None, typer.Option(
        help="memory budget: MiB, or a size with a unit "
             "(4GB = 10^9 B, 4GiB = 2^30 B, 800M)")] = None,
    max_output_pixels: Annotated[str | None, typer.Option(
        help="largest output grid in pixels (default 2e9; '2G', '500M'): the run stops before "
             "writing when the grid is larger")] = None,
    threads: Annotated[int | None, typer.Option(help="worker threads (0 = all cores)")] = None,
    gpu: Annotated[str | None, typer.Option(
        help="auto | on | off: CuPy GPU backend (docs/gpu.md)")] = None,
    no_preview: Annotated[bool, typer.Option("--no-preview", help="skip the PNG preview")] = False,
    export: Annotated[str | None, typer.Option(
        help="extra products: siril (linear FITS in [0, 1] + mask), tiff (16-bit stretched), "
             "comma-separated (docs/colour.md)")] = None,
    color: Annotated[str | None, typer.Option(
        help="record | apply | off: colour calibration (docs/colour.md)")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG | INFO | WARNING | ERROR")] = None,
    plan: Annotated[Path | None, typer.Option(
        help="stack_plan.csv: grid/survey mode (default: one found in an input folder)")] = None,
    no_plan: Annotated[bool, typer.Option("--no-plan",
                                          help="ignore a stack_plan.csv in the inputs")] = False,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="ignore the artifacts of an earlier run in OUT (default: resume)")] = False,
    scheduler: Annotated[str | None, typer.Option(
        help="Dask: 'local' (worker processes here) or tcp://HOST:PORT (docs/scale.md)")] = None,
    workers: Annotated[int | None, typer.Option(
        help="worker processes of --scheduler local")] = None,
    target: Annotated[str | None, typer.Option(
        help="mosaic only this target (its OBJECT or folder name) of a folder holding several",
    )] = None,
    region: Annotated[str | None, typer.Option(
        help="RA,DEC,RADIUS in degrees: mosaic only the frames centred in this circle")] = None,
    no_report: Annotated[bool, typer.Option("--no-report",
                                            help="skip OUT/index.html (the report)")] = False,
    serve: Annotated[bool, typer.Option(
        "--serve",
        help="serve the live report on 127.0.0.1 while the run goes (Ctrl-C stops)")] = False,
    port: Annotated[int, typer.Option(help="port of --serve (0: any free port)")] = 8000,
    no_browser: Annotated[bool, typer.Option("--no-browser",
                                             help="with --serve: do not open a browser")] = False,
) -> None:
    """Build a mosaic from INPUTS into OUT (mosaic.fits, preview, index.html, run.json, log).

    Frames of several sky-disjoint targets give one mosaic each, in OUT/<target>/, listed
    in OUT/targets.json (--target or --region picks one); a lone far frame is left out.

    Rerunning into the same OUT resumes: every artifact whose inputs and settings are
    unchanged (frame checks, clustering, master tiles, photometry, coadd blocks, the
    mosaic) is reused; see OUT/manifest.json and "resume" in run.json.
    """
    overrides = {
        "reproject.kernel": kernel, "output.pixel_scale_arcsec": pixel_scale,
        "output.rotation": rotation,
        "output.wcs_header": str(output_header) if output_header else None,
        "coadd.weighting": weighting,
        "input.wcs_dirs": [str(p) for p in wcs_dir] if wcs_dir else None,
        "input.bayer_pattern": bayer_pattern.upper() if bayer_pattern else None,
        "run.memory_budget_mb": memory_budget, "run.threads": threads,
        "output.max_output_pixels": max_output_pixels,
        "run.use_gpu": gpu.lower() if gpu else None,
        "output.preview": False if no_preview else None, "run.log_level": log_level,
        "output.export": export, "color.mode": color.lower() if color else None,
        "grid.plan": str(plan) if plan else None, "grid.auto_plan": False if no_plan else None,
        "run.fresh": True if fresh else None, "run.scheduler": scheduler, "run.workers": workers,
        "targets.select": target, "targets.region": region,
        "output.report": False if no_report else None,
    }
    try:
        config = load_config(config_file, overrides)
    except ConfigError as err:
        raise _fail(str(err), EXIT_USAGE) from err
    if not serve:
        _print_result(_run_with_config(inputs, out, config))
        return
    server = _start_server(out, port, open_browser=not no_browser)
    try:
        result = _run_with_config(inputs, out, config, live=server)
    except typer.Exit:
        server.set_state("failed", "see the terminal and OUT/run.json")
        raise
    finally:
        if server.status()["state"] == "running":
            server.set_state("done")
        console.print(f"report served at {server.url} (Ctrl-C stops)")
        _serve_until_interrupted(server)
    _print_result(result)


def _print_result(result: RunResult) -> None:
    """The targets table of a run with several targets, else the run summary."""
    _stdout().print(_targets_table(result) if result.targets else _summary_table(result))


def _start_server(out: Path, port: int, *, open_browser: bool):
    import webbrowser

    from skymosaic.report import ReportServer

    try:
        server = ReportServer(out, port=port).start()
    except OSError as err:
        raise _fail(f"cannot serve on 127.0.0.1:{port}: {err} (try --port 0)", EXIT_USAGE) from err
    console.print(f"live report at {server.url}")
    if open_browser:
        webbrowser.open(server.url)
    return server


def _serve_until_interrupted(server) -> None:
    from skymosaic.report import serve_until_interrupted

    serve_until_interrupted(server)


#: the width of a console that is not a terminal (a pipe, a file): wide enough that no
#: table cell is ever cut (``1_Lig…``) or wrapped
_PIPE_WIDTH = 100_000


def _stdout() -> Console:
    """The console of results (stdout): a terminal's width, or whole values when the output
    is not a terminal."""
    out = Console()
    return out if out.is_terminal else Console(width=_PIPE_WIDTH, soft_wrap=True)


def _estimate_parts(frames, config: Config):
    """`skymosaic.pipeline.estimate_targets`, or its error as text."""
    from skymosaic.pipeline import estimate_targets
    from skymosaic.plan.targets import TargetError

    try:
        with _quiet_targets():
            return (*estimate_targets(frames, config), None)
    except TargetError as err:
        return [], {}, str(err)


def _quiet_targets():
    """The split's warnings about lone frames: `inspect` and `plan` list them themselves."""
    from skymosaic.plan.targets import quiet_logger

    return quiet_logger("skymosaic.plan.targets")


def _print_estimate(frames, config: Config, out: Console | None = None, parts=None) -> None:
    """The pre-flight estimate of a run of ``frames`` (see `skymosaic.preflight`): one per
    target when the frames form several, and the lone frames a run would leave out."""
    out = out or _stdout()
    parts, lone, error = parts or _estimate_parts(frames, config)
    if error is not None:
        out.print(f"estimate: {escape(error)}")
        return
    several = len(parts) > 1
    out.print("estimate of a run (headers only; `run` also checks the free space of OUT)"
              + (f": {len(parts)} targets, one mosaic each in OUT/<target>/" if several else "")
              + ":")
    indent = "    " if several else "  "
    for part in parts:
        if several:
            ra, dec = part.target.center
            out.print(f"  target [bold]{escape(part.name)}[/]: {len(part.frames)} frame(s), "
                      f"centre RA {ra:.3f}, Dec {dec:+.3f}")
        if part.estimate is None:
            out.print(f"{indent}no output grid: {escape(part.error or 'no frame')}")
            continue
        for line in part.estimate.lines():
            out.print(f"{indent}{escape(line)}")
        if not part.estimate.ok:
            out.print(f"{indent}[bold yellow]a run would stop before writing:[/] "
                      f"{escape(part.estimate.message(prefix=''))}")
    timed = [p.estimate.time for p in parts if p.estimate is not None and p.estimate.time]
    if several and timed:
        out.print(f"  all targets: about {format_duration(sum(t.total_s for t in timed))}")
    for name, reason in lone.items():
        out.print(f"  lone frame left out: {escape(name)}: {escape(reason)}")


#: columns of `skymosaic inspect` (csv header, json keys; the table shows the first ones)
_INSPECT_COLUMNS = ("file", "kind", "size", "exposure_s", "filter", "date_obs", "wcs",
                    "scale_arcsec", "target", "problem", "path", "object", "channels",
                    "ra_deg", "dec_deg")
_TABLE_HEADINGS = {"file": "file", "kind": "kind", "size": "size", "exposure_s": "exp (s)",
                   "filter": "filter", "date_obs": "date", "wcs": "WCS",
                   "scale_arcsec": "scale \"/px", "target": "target", "problem": "problem"}


def _inspect_row(path: Path, info=None, error: str | None = None) -> dict:
    row: dict = dict.fromkeys(_INSPECT_COLUMNS)
    row.update(file=path.name, path=str(path), problem=error)
    if info is None:
        return row
    center = info.to_dict()["center_deg"]
    row.update(
        kind=f"{info.kind} {info.bayer_pattern}" if info.bayer_pattern else info.kind,
        size=f"{info.width}x{info.height}", exposure_s=info.exposure, filter=info.filter,
        date_obs=info.date_obs, object=info.object, channels=info.channels,
        wcs="none" if info.wcs is None else
        ("sidecar" if info.wcs_source.startswith("sidecar") else "header"),
        scale_arcsec=info.pixel_scale_arcsec, ra_deg=center[0] if center else None,
        dec_deg=center[1] if center else None,
        problem=None if info.wcs is not None else "no celestial WCS",
    )
    return row


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if key == "exposure_s":
        return f"{value:g}"
    if key == "scale_arcsec":
        return f"{value:.3f}"
    if key in ("ra_deg", "dec_deg"):
        return f"{value:.6f}"
    if key == "date_obs":
        return str(value)[:19]
    return str(value)


def _inspect_table(rows: list[dict], *, with_targets: bool) -> Table:
    table = Table(title=f"{len(rows)} file(s)")
    keys = [k for k in _TABLE_HEADINGS if with_targets or k != "target"]
    for key in keys:
        table.add_column(_TABLE_HEADINGS[key])
    for row in rows:
        table.add_row(*(escape(_cell(k, row[k])) for k in keys))
    return table


@app.command()
def inspect(
    inputs: Annotated[list[str], typer.Argument(help="FITS files, folders or glob patterns")],
    wcs_dir: Annotated[list[Path] | None, typer.Option(help="folder with .wcs sidecars")] = None,
    config_file: Annotated[Path | None, typer.Option(
        "--config", "-c", help="TOML configuration (for the estimate)")] = None,
    pixel_scale: Annotated[float | None, typer.Option(
        help="output scale in arcsec/px (estimate)")] = None,
    max_output_pixels: Annotated[str | None, typer.Option(
        help="pixel limit of the estimate")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="table (whole values when piped) | csv (one row per file; the "
                         "estimate goes to stderr) | json (files, targets and "
                         "estimates)")] = "table",
) -> None:
    """Print the frame catalog (headers only), the targets a run would make, and the
    estimate of a run of each."""
    from skymosaic.io import FrameError, discover_inputs, scan_frame

    if fmt not in ("table", "csv", "json"):
        raise _fail(f"--format must be table, csv or json, got {fmt!r}", EXIT_USAGE)
    try:
        config = load_config(config_file, {"output.pixel_scale_arcsec": pixel_scale,
                                           "output.max_output_pixels": max_output_pixels,
                                           "input.wcs_dirs": [str(p) for p in wcs_dir]
                                           if wcs_dir else None})
        paths = discover_inputs(inputs, recursive=config.input.recursive)
    except (ConfigError, FileNotFoundError) as err:
        raise _fail(str(err), EXIT_USAGE) from err
    rows, usable, n_bad = [], [], 0
    for p in paths:
        try:
            f = scan_frame(p, wcs_dirs=config.input.wcs_dirs,
                           bayer_pattern=config.input.bayer_pattern)
        except FrameError as err:
            n_bad += 1
            rows.append(_inspect_row(p, error=str(err)))
            continue
        rows.append(_inspect_row(p, f))
        if f.wcs is not None:
            usable.append((len(rows) - 1, f))
    parts, lone, error = [], {}, None
    if usable:  # mono and colour frames are not coadded together: estimate the majority
        counts: dict[int, int] = {}
        for _, f in usable:
            counts[f.channels] = counts.get(f.channels, 0) + 1
        keep = max(counts, key=lambda c: (counts[c], c))
        for k, f in usable:
            if f.channels != keep:
                rows[k]["problem"] = (f"{f.channels}-channel frame among {counts[keep]} "
                                      f"{keep}-channel frames (not coadded with them)")
        frames = [f for _, f in usable if f.channels == keep]
        parts, lone, error = _estimate_parts(frames, config)
        by_name = {row["path"]: row for row in rows}
        for part in parts:
            for f in part.frames:
                by_name[str(f.path)]["target"] = part.name
        for f in frames:
            if f.name in lone:
                by_name[str(f.path)]["problem"] = f"lone frame: {lone[f.name]}"
    if fmt == "json":
        doc = {"files": rows, "targets": [p.to_dict() for p in parts], "lone": lone}
        if error is not None:
            doc["error"] = error
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(_INSPECT_COLUMNS)
        writer.writerows([[_cell(k, row[k]) for k in _INSPECT_COLUMNS] for row in rows])
    else:
        _stdout().print(_inspect_table(rows, with_targets=len(parts) > 1))
    if usable and fmt != "json":
        # csv: stdout holds the rows only, the estimate goes to the terminal (stderr)
        _print_estimate(None, config, console if fmt == "csv" else None, (parts, lone, error))
    if paths and n_bad == len(paths):
        raise typer.Exit(EXIT_USAGE)


@app.command()
def plan(
    inputs: Annotated[list[str], typer.Argument(help="FITS files, folders or glob patterns")],
    out: Annotated[Path, typer.Option("-o", "--out",
                                      help="the CSV to write")] = Path("stack_plan.csv"),
    config_file: Annotated[Path | None, typer.Option("--config", "-c",
                                                     help="TOML configuration")] = None,
    min_overlap: Annotated[float | None, typer.Option(
        help="link frames overlapping more than this")] = None,
    wcs_dir: Annotated[list[Path] | None, typer.Option(help="folder with .wcs sidecars")] = None,
) -> None:
    """Group frames by sky position and write an editable stack_plan.csv."""
    from skymosaic.pipeline import plan_inputs

    overrides = {"cluster.min_overlap": min_overlap,
                 "input.wcs_dirs": [str(p) for p in wcs_dir] if wcs_dir else None}
    try:
        config = load_config(config_file, overrides)
        _setup_logging(config.run.log_level)
        path, catalog, groups = plan_inputs(inputs, out, config)
    except ConfigError as err:
        raise _fail(str(err), EXIT_USAGE) from err
    except (NoUsableFramesError, FileNotFoundError) as err:
        raise _fail(str(err), EXIT_USAGE) from err
    _stdout().print(f"{sum(len(g) for g in groups)} frame(s) in {len(groups)} group(s) written to "
                    f"[bold]{escape(str(path))}[/]; {len(catalog.rejected)} file(s) left out")
    _print_estimate(catalog.frames, config)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("-o", "--out", help="output folder")] = Path("demo_out"),
    seed: Annotated[int, typer.Option(help="random seed of the synthetic survey")] = 1,
    size: Annotated[str, typer.Option(help="small | medium")] = "small",
) -> None:
    """Generate a synthetic colour survey with a known truth and mosaic it end to end."""
    from skymosaic.demo import run_demo

    if size not in ("small", "medium"):
        raise _fail(f"--size must be 'small' or 'medium', got {size!r}", EXIT_USAGE)
    _setup_logging("INFO")
    try:
        with _bars() as bars:
            result, metrics = run_demo(out, seed=seed, size=size, progress=RichProgress(bars))
    except NoUsableFramesError as err:
        raise _fail(str(err), EXIT_USAGE) from err
    out = _stdout()
    out.print(_summary_table(result))
    table = Table(title="quality against the known truth", show_header=False)
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    out.print(table)
    out.print(f"Files are in [bold]{escape(str(result.out_dir.resolve()))}[/]")


@app.command()
def doctor(
    index_dir: Annotated[list[Path] | None, typer.Option(help="extra index folder")] = None,
    config_file: Annotated[Path | None, typer.Option("--config", "-c", help="TOML")] = None,
) -> None:
    """Report the plate solvers and index files found (needed for frames without WCS)."""
    from skymosaic.astrometry import doctor_report

    try:
        solve = load_config(config_file).solve
    except ConfigError as err:
        raise _fail(str(err), EXIT_USAGE) from err
    report = doctor_report([*solve.index_dirs, *(index_dir or [])], solver=solve.solver,
                           astap_database=solve.astap_database)
    out = Console()
    solvers = Table(title="plate solvers")
    for col in ("program", "path", "version"):
        solvers.add_column(col)
    for s in report["solvers"]:
        solvers.add_row(s["name"], s["path"] or "[red]not found[/]", s["version"] or "")
    out.print(solvers)
    chosen = report["chosen"]
    out.print(f"solver a run would use (solve.solver = {solve.solver!r}): "
              + (f"[bold]{chosen['name']}[/] ({chosen['executable']})" if chosen else
                 "[red]none[/]: install one with `make solver` (see docs/astrometry.md)"))
    if report["astap_database"]:
        out.print(f"ASTAP star database: {report['astap_database']}")
    folders = ", ".join(d["path"] + ("" if d["exists"] else " (missing)")
                        for d in report["index_dirs"])
    out.print(f"index folders searched: {folders}")
    indexes = Table(title=f"{len(report['index_files'])} astrometry.net index file(s)")
    for col in ("file", "id", "quad sizes (arcmin)", "healpix", "MB"):
        indexes.add_column(col)
    for i in report["index_files"]:
        lo, hi = i["scale_arcmin"]
        indexes.add_row(i["path"], str(i["index_id"] or ""),
                        f"{lo:g} - {hi:g}" if lo and hi else "?",
                        "all sky" if i["healpix"] is None else str(i["healpix"]),
                        f"{i['size_mb']:.1f}")
    out.print(indexes)
    if report["field_range_arcmin"]:
        lo, hi = report["field_range_arcmin"]
        out.print(f"these indexes solve fields of roughly {lo / 60:.2f} to "
                  f"{min(hi / 60, 180):.0f} deg across (astrometry.net needs quads of 10-100% "
                  "of the field size)")
    elif report["solvers"][0]["path"]:
        out.print("[red]no index file found[/]: solve-field cannot solve anything; "
                  "run `make solver`")
    out.print(f"python3 on the solver's PATH: {report['python3_for_solver'] or 'not found'}")


def _report_budget(memory_budget: str | None) -> int:
    try:
        return load_config(None, {"run.memory_budget_mb": memory_budget}).memory_budget_bytes
    except ConfigError as err:
        raise _fail(str(err), EXIT_USAGE) from err


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="a run folder (holding run.json)")],
    memory_budget: Annotated[str | None, typer.Option(help="memory budget (as for run)")] = None,
    tile_format: Annotated[str, typer.Option(help="deep-zoom tiles: jpg | png")] = "jpg",
) -> None:
    """(Re)build OUT/index.html, the offline report, from an existing run."""
    from skymosaic.report import ReportError, write_report, write_targets_index

    _setup_logging("INFO")
    if tile_format not in ("jpg", "png"):
        raise _fail(f"--tile-format must be 'jpg' or 'png', got {tile_format!r}", EXIT_USAGE)
    budget = _report_budget(memory_budget)
    try:
        if (out / "targets.json").is_file() and (not (out / "run.json").is_file()
                                                 or _is_targets_run(out)):
            for folder in sorted(p.parent for p in out.glob("*/run.json")):
                write_report(folder, memory_budget=budget, tile_format=tile_format)
            page = write_targets_index(out)
        else:
            page = write_report(out, memory_budget=budget, tile_format=tile_format)
    except ReportError as err:
        raise _fail(str(err), EXIT_USAGE) from err
    Console().print(f"report written to [bold]{page}[/]")


def _is_targets_run(out: Path) -> bool:
    """Whether ``out`` holds a run with several targets (one mosaic per ``out/<target>/``)."""
    import json

    try:
        targets = json.loads((out / "run.json").read_text()).get("targets", {})
        return len(targets.get("targets", [])) > 1
    except (OSError, ValueError, AttributeError):
        return False


@app.command()
def view(
    out: Annotated[Path, typer.Argument(help="a run folder (finished or running)")],
    port: Annotated[int, typer.Option(help="port on 127.0.0.1 (0: any free port)")] = 8000,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="do not open a browser")] = False,
) -> None:
    """Serve the report of OUT on 127.0.0.1 and open it in the browser (Ctrl-C stops)."""
    if not out.is_dir():
        raise _fail(f"{out}: no such folder", EXIT_USAGE)
    server = _start_server(out, port, open_browser=not no_browser)
    if (out / "run.json").is_file() and not (out / ".scratch").exists():
        server.set_state("done")
    _serve_until_interrupted(server)


export_app = typer.Typer(no_args_is_help=True, help="Export a finished mosaic to other formats.")
app.add_typer(export_app, name="export")


@export_app.command("hips")
def export_hips_command(
    out: Annotated[Path, typer.Argument(help="a run folder (holding run.json and the mosaic)")],
    dest: Annotated[Path | None, typer.Option("-o", "--out",
                                              help="HiPS folder (default OUT/hips)")] = None,
    memory_budget: Annotated[str | None, typer.Option(help="memory budget (as for run)")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing HiPS folder")] = False,
    threads: Annotated[int, typer.Option(help="threads (0: no threading)")] = 0,
) -> None:
    """Write a HiPS of the science mosaic of OUT (Aladin reads it; colour: one per channel)."""
    from skymosaic.report import export_hips

    _setup_logging("INFO")
    try:
        products = json.loads((out / "run.json").read_text()).get("products") or {}
    except (OSError, ValueError) as err:
        raise _fail(f"{out / 'run.json'}: cannot be read: {err}", EXIT_USAGE) from err
    mosaic = out / (products.get("mosaic") or "mosaic.fits")
    if not mosaic.is_file():
        raise _fail(f"{mosaic}: no mosaic in this run folder", EXIT_USAGE)
    try:
        folders = export_hips(mosaic, dest or out / "hips",
                              memory_budget=_report_budget(memory_budget),
                              threads=threads or False, overwrite=force,
                              title=f"skymosaic {out.name}")
    except (FileExistsError, MemoryError, ValueError) as err:
        raise _fail(str(err), EXIT_USAGE) from err
    Console().print("HiPS written to " + ", ".join(f"[bold]{f}[/]" for f in folders))


@app.command()
def version() -> None:
    """Print the version."""
    Console().print(__version__)


#: click's error base class: click's own, or the copy that recent typer releases vendor.
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (see the module docstring)."""
    try:
        # without standalone mode click *returns* the code of a `typer.Exit` (it does not raise)
        code = app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:  # click's own usage errors
        return int(exc.code or 0)
    except _CLICK_ERROR as exc:  # bad usage: missing option, bad value, unknown command
        exc.show()
        return EXIT_USAGE
    except typer.Abort:
        return EXIT_USAGE
    except Exception as exc:
        logging.getLogger("skymosaic").exception("internal error")
        console.print(f"[bold red]internal error:[/] {exc}")
        return EXIT_INTERNAL
    return code if isinstance(code, int) else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
