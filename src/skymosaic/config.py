"""One validated configuration model: TOML file < CLI flags.

Every section forbids unknown keys, so a typo stops the run before any work with a message
that names the key, the value and what is allowed (`ConfigError`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from skymosaic._errors import ConfigError
from skymosaic._space import parse_count, parse_size
from skymosaic._surface import SURFACE_NAMES
from skymosaic.assemble import COADD_REJECT, COADD_WEIGHTINGS
from skymosaic.astrometry import SOLVER_CHOICES
from skymosaic.backend import USE_GPU_CHOICES
from skymosaic.grid import GRID_BLENDS
from skymosaic.io import BAYER_PATTERNS, EXPORT_FORMATS, STRETCH_CURVES
from skymosaic.photometry import COLOR_MODES, COLOR_WHITE, GAIN_SOURCES, SKY_SURFACES
from skymosaic.reproject import EDGES, KERNELS, PROJECTIONS, ROTATIONS
from skymosaic.stack import (
    COMBINE_METHODS,
    NORMALIZATION_METHODS,
    REJECTION_METHODS,
    WEIGHTING_METHODS,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "LOG_LEVELS",
    "Config",
    "ConfigError",
    "config_digest",
    "config_reference_markdown",
    "dump_toml",
    "load_config",
]

#: Console log levels (``run.log_level``; names of the `logging` module). Every other choice
#: list is owned by the module that implements the choice; the ``Literal`` types below read
#: them (``Literal[X]`` with a tuple ``X`` is ``Literal[*X]``), so the two cannot drift
#: (tests/test_choices.py). mypy cannot read a variable as a literal: ``valid-type`` ignores.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class InputConfig(_Section):
    """Which files are frames and how to read them."""

    recursive: bool = Field(default=True, description="search folders recursively")
    wcs_dirs: list[Path] = Field(default_factory=list,
                                 description="extra folders with .wcs sidecars")
    bayer_pattern: Literal[BAYER_PATTERNS] | None = Field(  # type: ignore[valid-type]
        default=None, description="force this CFA pattern (cameras that write no BAYERPAT)"
    )
    valid_min: float | None = Field(
        default=1e-6,
        description="pixels not above this in every channel are no data (zero-filled "
        "borders); -inf keeps every finite value (sky-subtracted inputs)",
    )
    verify_pixels: bool = Field(
        default=True,
        description="read every frame once up front: reject unreadable or all-NaN frames"
    )


class SolveConfig(_Section):
    """Plate solving of frames without a usable WCS (see docs/astrometry.md)."""

    enabled: bool = Field(
        default=True, description="plate-solve frames that have no usable celestial WCS"
    )
    solver: Literal[SOLVER_CHOICES] = Field(  # type: ignore[valid-type]
        default="auto", description="auto: ASTAP if it has a star database, else solve-field"
    )
    timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="CPU limit per frame, s (killed after 2x + 30 s)"
    )
    downsample: int = Field(
        default=2, ge=1, le=8, description="solver-side downsampling (2 suits Bayer frames)"
    )
    max_sources: int = Field(
        default=100, ge=10, description="brightest sources tried (bounds the time of a failure)"
    )
    radius_deg: float = Field(
        default=3.0, gt=0, le=180, description="search radius around the header RA/DEC, deg"
    )
    scale_tolerance: float = Field(
        default=0.15, gt=0, lt=1, description="scale search range: header scale x (1 +- this)"
    )
    blind: bool = Field(
        default=False, description="also solve frames without RA/DEC in the header (whole sky)"
    )
    workers: int = Field(default=0, ge=0, description="frames solved in parallel, 0 = run.threads")
    validate_existing: bool = Field(
        default=True, description="re-solve a WCS whose scale disagrees with FOCALLEN/XPIXSZ"
    )
    max_scale_ratio: float = Field(
        default=1.5, gt=1, description="largest accepted ratio of WCS to optics pixel scale"
    )
    index_dirs: list[Path] = Field(
        default_factory=list, description="extra folders of astrometry.net index files"
    )
    astap_database: Path | None = Field(default=None, description="ASTAP star database folder (-d)")


class ReprojectConfig(_Section):
    """Resampling onto the output grid."""

    kernel: Literal[KERNELS] = Field(  # type: ignore[valid-type]
        default="bilinear", description="resampling kernel (see docs/reprojection.md)"
    )
    edge: Literal[EDGES] = Field(  # type: ignore[valid-type]
        default="half",
        description="frame edges in the coadd: half = out to each frame's outer pixel edges "
        "(as reproject), strict = only within its outermost pixel centres; photometric fits "
        "and stacking always use strict (see docs/reprojection.md)",
    )
    map_tolerance_px: float = Field(
        default=0.01, gt=0, le=0.5, description="largest error of the interpolated WCS mapping, px"
    )
    grid_step_px: int = Field(
        default=64, ge=4, le=1024, description="initial spacing of the exact-mapping grid, px"
    )


class OutputConfig(_Section):
    """The output grid and products."""

    pixel_scale_arcsec: float | None = Field(default=None, gt=0,
                                             description="None: median input scale")
    rotation: Literal[ROTATIONS] = Field(  # type: ignore[valid-type]
        default="north", description="north-up, or rotated to the minimum-area rectangle"
    )
    projection: Literal[PROJECTIONS] = Field(  # type: ignore[valid-type]
        default="TAN", description="FITS projection of the output grid"
    )
    wcs_header: Path | None = Field(default=None,
                                    description="use this FITS/text header as output grid")
    preview: bool = Field(default=True, description="write the stretched PNG preview")
    preview_max_size: int = Field(default=4096, ge=64, le=65536,
                                  description="long side of the preview, px")
    report: bool = Field(default=True,
                         description="write OUT/index.html, the offline report with a "
                         "deep-zoom viewer and overlays (docs/report.md)")
    name: str = Field(
        default="mosaic", pattern=r"^[A-Za-z0-9._-]+$", description="base name of the output files"
    )
    max_output_pixels: float = Field(
        default=2e9, gt=0, description="largest output grid, pixels (H x W); larger grids stop the "
        "run before anything is written (pre-flight check, docs/scale.md); a number or '2G', "
        "'500M'",
    )
    export: list[Literal[EXPORT_FORMATS]] = Field(  # type: ignore[valid-type]
        default_factory=list, description="extra products (docs/colour.md): siril = "
        "NAME_linear.fits (one HDU, float32 in [0, 1], no data 0) + NAME_linear_mask.fits; "
        "tiff = NAME.tif (16-bit, stretched, sRGB)",
    )

    @field_validator("export", mode="before")
    @classmethod
    def _export_list(cls, v: Any) -> Any:
        if isinstance(v, str):  # the command line: "siril,tiff"
            return [x.strip().lower() for x in v.split(",") if x.strip()]
        return v

    @field_validator("max_output_pixels", mode="before")
    @classmethod
    def _count(cls, v: Any) -> Any:
        return parse_count(v) if isinstance(v, str) else v


class CoaddConfig(_Section):
    """How inputs are weighted and outliers rejected in the final coadd."""

    weighting: Literal[COADD_WEIGHTINGS] = Field(  # type: ignore[valid-type]
        default="noise", description="noise = inverse variance from each frame's robust noise"
    )
    reject: Literal[COADD_REJECT] = Field(  # type: ignore[valid-type]
        default="auto", description="outlier rejection across overlapping inputs (trails, hot "
        "pixels): depth >= 3 clipped mean, depth 2 the brighter input's outliers dropped")
    reject_kappa: float = Field(default=5.0, gt=0, description="rejection threshold, in combined "
                                "noise sigmas (with a 10 % relative term for star cores)")


class QualityConfig(_Section):
    """Per-frame quality (star detection with sep) and session-relative rejection."""

    enabled: bool = Field(default=True, description="measure frame quality and reject outliers")
    detect_sigma: float = Field(default=5.0, gt=0,
                                description="star detection threshold, in noise sigma")
    max_background_mad: float = Field(default=5.0, gt=0,
                                      description="reject background > median + k*MAD")
    max_noise_mad: float = Field(default=5.0, gt=0, description="reject noise > median + k*MAD")
    min_star_fraction: float = Field(default=0.3, ge=0, lt=1,
                                     description="reject star count < fraction of median")
    max_star_mad: float = Field(default=5.0, gt=0, description="reject star count < median - k*MAD")
    max_fwhm_mad: float = Field(default=5.0, gt=0, description="reject FWHM > median + k*MAD")
    max_elongation_mad: float = Field(default=5.0, gt=0,
                                      description="reject elongation > median + k*MAD")
    mad_floor: float = Field(default=0.02, ge=0, lt=1,
                             description="MAD is at least this fraction of the median")
    session_gap_hours: float = Field(
        default=4.0, gt=0, le=240, description="frames are judged per session (target, filter, "
        "instrument, night); without a site longitude in the header a new night starts after a gap "
        "longer than this, hours (docs/quality.md)")


class GridConfig(_Section):
    """Grid/survey mode, driven by a stack_plan.csv (see docs/stack_plan.md)."""

    plan: Path | None = Field(
        default=None, description="stack_plan.csv (default: one found in an input folder)")
    auto_plan: bool = Field(default=True,
                            description="use a stack_plan.csv found in an input folder")
    tile_factor: float = Field(default=1.0, gt=0, le=20,
                               description="tile size / median frame size")
    overlap: float = Field(default=0.3, ge=0, le=0.9,
                           description="fraction of a tile shared with its neighbour")
    min_frames: int = Field(default=1, ge=1, description="tiles with fewer frames are dropped")
    blend: Literal[GRID_BLENDS] = Field(  # type: ignore[valid-type]
        default="pyramid", description="multi-resolution blending, feathering or weighted mean")
    blend_levels: int | None = Field(default=None, ge=1, le=12,
                                     description="pyramid levels (default: from overlap)")
    feather_sigma: float = Field(default=2.0, gt=0,
                                 description="smoothing of the feathering masks, px")
    frame_photometry: bool = Field(
        default=True, description="with photometry on: solve every frame's gain and sky surface "
        "over the frame overlaps (the classic engine) before stacking the tiles; false: the stack "
        "normalisation inside each tile, then a gain and surface per tile")


class ClusterConfig(_Section):
    """Grouping of frames by sky position (classic mode)."""

    min_overlap: float = Field(default=0.5, gt=0, le=1,
                               description="link frames overlapping more than this fraction")
    max_frames: int | None = Field(default=None, ge=2, description="split groups larger than this")
    max_group_mb: float | None = Field(default=None, gt=0,
                                       description="split groups whose frames exceed "
                                       "this size, MiB (or a size with a unit: '2GB', '1.5GiB')")

    @field_validator("max_group_mb", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return _mib(v)


class TargetsConfig(_Section):
    """Several sky-disjoint targets in one run (classic mode, docs/targets.md)."""

    split: bool = Field(
        default=True, description="each sky-disjoint group of frames is its own mosaic in "
        "OUT/<target>/ (one target: OUT/ as usual) and lone far frames are left out; false: one "
        "mosaic of every frame")
    link_diagonals: float = Field(
        default=1.5, gt=0, le=10, description="frames whose centres are closer than this many "
        "field diagonals are on one target")
    select: str | None = Field(
        default=None, description="mosaic only this target (its name or OBJECT; --target)")
    region: tuple[float, float, float] | None = Field(
        default=None, description="mosaic only the frames centred within RADIUS of (RA, DEC): "
        "[ra, dec, radius] in degrees (--region RA,DEC,RADIUS)")

    @field_validator("region", mode="before")
    @classmethod
    def _region(cls, v: Any) -> Any:
        if isinstance(v, str):
            parts = [p for p in v.replace(" ", ",").split(",") if p]
            if len(parts) != 3:
                raise ValueError(f"must be RA,DEC,RADIUS in degrees, got {v!r}")
            return parts
        return v

    @field_validator("region")
    @classmethod
    def _region_range(cls, v: tuple[float, float, float] | None
                      ) -> tuple[float, float, float] | None:
        if v is not None and not (-90 <= v[1] <= 90 and 0 < v[2] <= 180):
            raise ValueError(f"needs -90 <= DEC <= 90 and 0 < RADIUS <= 180 degrees, got {list(v)}")
        return v


class StackConfig(_Section):
    """Stacking of each group into a master tile (classic mode)."""

    enabled: bool = Field(default=True,
                          description="false: coadd every frame directly (no master tiles)")
    min_frames: int = Field(default=2, ge=1,
                            description="smaller groups go to the coadd frame by frame")
    normalization: Literal[NORMALIZATION_METHODS] = Field(  # type: ignore[valid-type]
        default="stars", description="photometric normalisation to the reference frame (stars: "
        "gains from the reference's stars, sky surfaces from the binned difference)"
    )
    sky_surface: Literal[SURFACE_NAMES] = Field(  # type: ignore[valid-type]
        default="quadratic", description="normalization = stars: order of each frame's sky "
        "surface relative to the reference"
    )
    weighting: list[Literal[WEIGHTING_METHODS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["noise"], description="frame weights (product of these)"
    )
    rejection: Literal[REJECTION_METHODS] = Field(  # type: ignore[valid-type]
        default="winsorized", description="per-pixel outlier rejection"
    )
    kappa_low: float = Field(default=3.0, gt=0, description="low clipping threshold, sigma")
    kappa_high: float = Field(default=3.0, gt=0, description="high clipping threshold, sigma")
    max_iter: int = Field(default=5, ge=1, description="clipping iterations")
    n_low: int = Field(default=1, ge=0, description="minmax: lowest samples dropped")
    n_high: int = Field(default=1, ge=0, description="minmax: highest samples dropped")
    combine: Literal[COMBINE_METHODS] = Field(  # type: ignore[valid-type]
        default="mean", description="weighted mean or median")


class PhotometryConfig(_Section):
    """Phase 5 photometric normalisation of the tiles/frames before the coadd."""

    enabled: bool = Field(default=True,
                          description="solve a gain and sky surface per input and channel")
    gauge: Literal["mean"] | int = Field(
        default="mean",
        description="'mean' (mean log-gain 0, mean offset 0) or a reference input index"
    )
    prior_weight: float = Field(default=1e-3, ge=0,
                                description="weak prior toward gain 1, offset 0")
    robust_iter: int = Field(default=3, ge=0,
                             description="robust re-weighting iterations of the solve")
    min_overlap_pixels: int = Field(default=100, ge=10,
                                    description="smallest overlap used for a pair")
    max_samples: int = Field(default=20000, ge=100,
                             description="pixels sampled per pair and channel")
    gain_from: Literal[GAIN_SOURCES] = Field(  # type: ignore[valid-type]
        default="auto",
        description="pair gains from detrended pixels, star aperture fluxes, or auto "
        "(apertures when they give 0.1 %, else the more precise of the two; apertures when "
        "PSFs differ; docs/photometry.md)")
    match_kernel: Literal[KERNELS] = Field(  # type: ignore[valid-type]
        default="lanczos3", description="resampling kernel of the inputs for the pair fits")
    sky_surface: Literal[SKY_SURFACES] = Field(  # type: ignore[valid-type]
        default="quadratic", description="per-input sky surface in the input's own pixels, solved "
        "with the gains from star-masked overlap differences (smallest surfaces consistent with "
        "the overlaps); 'none': one offset per input and background matching (docs/photometry.md)")
    surface_block: int = Field(default=32, ge=4, description="sky-sample block size, output px")
    surface_ridge: float = Field(default=1e-6, gt=0, description="smallest-surface regularisation "
                                 "weight, relative to the data")
    background: bool = Field(default=True, description="with sky_surface = 'none': SWarp-like "
                             "background matching after the solve")
    background_plane: bool = Field(
        default=False, description="deprecated, ignored: sky gradients are part of sky_surface "
        "(the plane matching it enabled tilted inputs against each other)")
    coverage_renorm: bool = Field(default=False,
                                  description="second pass: coverage-based gain per input")
    coverage_sigma_px: float = Field(default=32.0, gt=0, description="blur of the coverage map, px")
    coverage_clip: tuple[float, float] = Field(default=(0.8, 1.25),
                                               description="allowed coverage gains")
    diagnostics: bool = Field(default=True, description="write photometry_diagnostics.png")

    @field_validator("background_plane")
    @classmethod
    def _deprecated_plane(cls, v: bool) -> bool:
        if v:
            logging.getLogger(__name__).warning(
                "photometry.background_plane is deprecated and ignored: per-input sky gradients "
                "are solved by photometry.sky_surface (default 'quadratic')")
        return v

    @field_validator("coverage_clip")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] <= 1 <= v[1]):
            raise ValueError(f"must satisfy 0 < low <= 1 <= high, got {v}")
        return v


class ColorConfig(_Section):
    """Colour calibration and the display stretch of previews and exports (docs/colour.md)."""

    mode: Literal[COLOR_MODES] = Field(  # type: ignore[valid-type]
        default="record", description="record: background neutralisation and white balance "
        "measured, written to run.json and the FITS header, applied to the preview and TIFF "
        "only; apply: also to the science FITS (stays linear; said in HISTORY); off: none")
    white: Literal[COLOR_WHITE] = Field(  # type: ignore[valid-type]
        default="stars", description="white reference: the robust mean colour of the unsaturated "
        "stars, or none (background neutralisation only)")
    min_stars: int = Field(default=10, ge=1, description="fewest good stars for a white balance")
    star_color: tuple[float, float, float] = Field(
        default=(1.0, 1.0, 1.0), description="colour (R, G, B) the mean star gets from the white "
        "balance: (1, 1, 1) white; a G2V-like white reference is the mean field star's colour in "
        "a G2V white balance (docs/colour.md)")

    @field_validator("star_color")
    @classmethod
    def _positive_color(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(math.isfinite(x) and x > 0 for x in v):
            raise ValueError(f"must be 3 positive numbers, got {list(v)}")
        return v
    target_background: float = Field(
        default=0.15, gt=0, le=0.5, description="display level of the sky median in the preview, "
        "fraction of full scale")
    shadow_clip: float = Field(
        default=2.8, ge=0, le=20, description="preview black point, in normalised MADs below "
        "the sky median")
    curve: Literal[STRETCH_CURVES] = Field(  # type: ignore[valid-type]
        default="asinh", description="display curve: asinh (highlights compressed, cores keep "
        "structure) or mtf (PixInsight's screen transfer function)")
    highlight_percentile: float = Field(
        default=100.0, gt=50, le=100, description="percentile of the calibrated preview plane "
        "shown at full scale (100: its brightest pixel)")


def _mib(value: Any, *, minimum: float = 0.0) -> Any:
    """A size with a unit (``"4GB"``, ``"4GiB"``, ``"800M"``) in MiB; other values unchanged
    (bare numbers are MiB already; pydantic checks their type and range).

    A string below ``minimum`` MiB is refused here, so that the message shows the value as
    given (``'10MB'``), not its conversion.
    """
    if not isinstance(value, str):
        return value
    mib = parse_size(value) / 2**20
    if mib < minimum:
        raise ValueError(f"{value!r} is {mib:.4g} MiB, below the minimum of {minimum:g} MiB")
    return mib


#: the default budget's cap, MiB: a 48 Mpx mono mosaic of 30 Seestar frames peaks at 0.93 GB
#: (whole process) with it (BENCHMARKS.md, bench_end_to_end); larger runs stay bounded by it
DEFAULT_BUDGET_CAP_MB = 700


def _default_budget_mb() -> float:
    return min(DEFAULT_BUDGET_CAP_MB, round(0.25 * psutil.virtual_memory().total / 2**20))


class RunConfig(_Section):
    """Resources and logging."""

    memory_budget_mb: float = Field(
        default_factory=_default_budget_mb, ge=64,
        description="memory budget in MiB (default 700 MiB, "
        "or 25% of RAM if less), or a size with a unit: '4GB' (10^9 bytes), '4GiB' (2^30), "
        "'800M' (10^6)",
    )
    threads: int = Field(default=0, ge=0, description="worker threads, 0 = all cores")
    use_gpu: Literal[USE_GPU_CHOICES] = Field(  # type: ignore[valid-type]
        default="auto", description="CuPy GPU backend: auto = when CuPy and a CUDA device are "
        "present, on = required (error otherwise), off = CPU only (docs/gpu.md)",
    )
    log_level: Literal[LOG_LEVELS] = Field(  # type: ignore[valid-type]
        default="INFO", description="console log level (the log file is always INFO or finer)"
    )
    fresh: bool = Field(
        default=False, description="ignore the run directory's manifest: recompute every artifact"
    )
    scheduler: str | None = Field(
        default=None, description="Dask: 'local' (a local cluster of processes) or a scheduler "
        "address 'tcp://host:port'; not set: threads in this process (docs/scale.md)",
    )
    workers: int = Field(default=0, ge=0,
                         description="worker processes of scheduler 'local', 0 = all cores")
    block_rows: int | None = Field(
        default=None, ge=1, description="output rows per coadd block (a Dask task); not set: "
        "planned from the memory budget",
    )

    @field_validator("memory_budget_mb", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return _mib(v, minimum=64)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("scheduler")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and v != "local" and "://" not in v:
            raise ValueError("must be 'local' or a scheduler address such as 'tcp://host:8786', "
                             f"got {v!r}")
        return v


class Config(_Section):
    """The whole configuration (see ``docs/configuration.md``)."""

    input: InputConfig = Field(default_factory=InputConfig)
    solve: SolveConfig = Field(default_factory=SolveConfig)
    grid: GridConfig = Field(default_factory=GridConfig)
    reproject: ReprojectConfig = Field(default_factory=ReprojectConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    coadd: CoaddConfig = Field(default_factory=CoaddConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    targets: TargetsConfig = Field(default_factory=TargetsConfig)
    stack: StackConfig = Field(default_factory=StackConfig)
    photometry: PhotometryConfig = Field(default_factory=PhotometryConfig)
    color: ColorConfig = Field(default_factory=ColorConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.run.memory_budget_mb * 2**20)


def _known_keys(loc: tuple) -> list[str]:
    """The keys allowed next to the one at ``loc`` (the fields of its parent section)."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return []
        model = sub
    return list(model.model_fields)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            loc = tuple(e["loc"])
            where = f"keys in [{'.'.join(map(str, loc[:-1]))}]" if len(loc) > 1 else "sections"
            known = ", ".join(_known_keys(loc))
            lines.append(f"  unknown key '{key}' (value {e['input']!r}); allowed {where}: {known}")
            continue
        allowed = ""
        ctx = e.get("ctx") or {}
        if "expected" in ctx and str(ctx["expected"]) not in e["msg"]:
            allowed = f"; allowed: {ctx['expected']}"
        lines.append(f"  '{key}' = {e['input']!r}: {e['msg']}{allowed}")
    return "\n".join(lines)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config override {dotted!r}: '{p}' is not a section")
    node[parts[-1]] = value


def load_config(path: str | os.PathLike | None = None,
                overrides: dict[str, Any] | None = None) -> Config:
    """Build the validated configuration from a TOML file and dotted-key overrides.

    Parameters
    ----------
    path : path, optional
        A TOML file with sections ``[input]``, ``[reproject]``, ``[output]``, ``[coadd]``,
        ``[run]``.
    overrides : dict, optional
        ``{"reproject.kernel": "lanczos3", ...}`` (command-line flags); ``None`` values are
        ignored (flag not given).

    Raises
    ------
    ConfigError
        Naming the file, the key, the bad value and what is allowed.
    """
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = os.fspath(path)
        try:
            with open(path, "rb") as fh:
                tree = tomllib.load(fh)
        except FileNotFoundError as err:
            raise ConfigError(f"config file {source} does not exist") from err
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise ConfigError(f"config file {source} is not valid TOML: {err}") from err
        except OSError as err:  # a folder, no permission
            raise ConfigError(f"config file {source} cannot be read: {err}") from err
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, key, value)
            source = f"{source} + command line" if "command line" not in source else source
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from err


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def dump_toml(config: Config) -> str:
    """The effective configuration as TOML (readable back with `load_config`)."""
    lines = []
    for section, values in config.model_dump(mode="json").items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                lines.append(f"# {key} = (not set)")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _type_name(annotation: Any) -> str:
    """A short human name of a field's type for the docs table."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    for noise in ("typing.", "pathlib.", "Optional[", "Literal"):
        text = text.replace(noise, "")
    text = text.replace("list[", "list of ").replace("tuple[", "tuple of ").replace("[", "one of ")
    text = text.replace("]", "")
    return text.replace("'", "").replace(" | None", " or unset").replace("|", "or")


def config_reference_markdown() -> str:
    """The per-section key tables of docs/configuration.md, generated from the model."""
    out = []
    defaults = Config()
    for name in Config.model_fields:
        section = getattr(defaults, name)
        doc = (type(section).__doc__ or "").strip().splitlines()[0]
        out += [f"## [{name}]", "", doc, "", "| key | default | type | meaning |",
                "|---|---|---|---|"]
        for key, f in type(section).model_fields.items():
            default = ("700 MiB (25% of RAM if less)" if (name, key) == ("run", "memory_budget_mb")
                       else getattr(section, key))
            shown = "not set" if default is None else json.dumps(default, default=str)
            out.append(f"| `{key}` | `{shown}` | {_type_name(f.annotation)} "
                       f"| {f.description or ''} |")
        out.append("")
    return "\n".join(out)


#: run settings that change how a run executes but not its products
_NOT_DIGESTED = ("log_level", "fresh", "scheduler", "workers", "use_gpu")


def config_digest(config: Config, *, sections: tuple[str, ...] | None = None) -> str:
    """A short SHA-256 of the (selected sections of the) configuration, for provenance."""
    data = config.model_dump(mode="json")
    if sections is not None:
        data = {k: data[k] for k in sections}
    for key in _NOT_DIGESTED:  # how the run executes, not what it computes
        data.get("run", {}).pop(key, None)
    data.get("output", {}).pop("report", None)  # the report is a view of the products
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
