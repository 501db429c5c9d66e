"""The package's layers (docs/architecture.md), enforced on the source by its imports.

Bottom-up: shared utilities -> backend -> io, reproject -> the algorithm packages ->
config (it reads the algorithm packages' lists of choices) -> the run helpers -> pipeline
-> report, cli. A module may import its own layer or a lower one, and never another
package's private module (``skymosaic.x._y`` from outside ``skymosaic.x``). Imports under
``if TYPE_CHECKING:`` are annotations, not dependencies, and are not counted. Today's
exceptions are listed in ALLOWED with their reason; a new one fails, and so does an entry
that no longer occurs.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "skymosaic"

LAYERS = [
    {"_errors", "_version", "_space", "_tiles", "_surface", "_stats", "_memory", "_dask",
     "_threads"},
    {"backend"},
    {"io", "reproject"},
    {"photometry", "stack", "plan", "blend", "astrometry", "assemble", "grid", "synth"},
    {"config"},
    {"_manifest", "_verify", "_display", "preflight"},
    {"pipeline"},
    {"report", "demo", "cli", "__init__"},
]
RANK = {name: k for k, layer in enumerate(LAYERS) for name in layer}

#: (importing top-level unit, imported module) -> why it is allowed for now.
ALLOWED_UP = {
    ("backend", "skymosaic.reproject._resample"): "backend <-> reproject cycle (issue 18 item 3)",
    ("io", "skymosaic.assemble._coadd"): "io._stream reads the coadd's DiskMosaic store",
    ("grid", "skymosaic.config"): "grid._run takes the whole Config (its digest)",
    ("grid", "skymosaic._display"): "grid mode's writer (issue 18 item 2)",
    ("pipeline", "skymosaic.report"): "the run writes its offline report at the end",
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    rel = path.relative_to(SRC.parent).with_suffix("")
    package = list(rel.parts[:-1])
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                yield ".".join([*base, node.module] if node.module else base)
            else:
                yield node.module or ""


def _violations():
    up, private = set(), set()
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        me = ".".join(rel.parts)
        mine = _unit(me)
        for target in _imports(path):
            if not target.startswith("skymosaic."):
                continue
            other = _unit(target)
            if other != mine and RANK[other] > RANK[mine]:
                up.add((mine, target))
            parts = target.split(".")
            if other != mine and any(p.startswith("_") for p in parts[2:]):
                private.add((me, target))
    return up, private


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert units <= set(RANK), sorted(units - set(RANK))


def test_no_import_goes_up_a_layer():
    up, _ = _violations()
    assert up - set(ALLOWED_UP) == set(), sorted(up - set(ALLOWED_UP))
    assert set(ALLOWED_UP) - up == set(), f"no longer needed: {sorted(set(ALLOWED_UP) - up)}"


def test_private_imports_only_the_known_ones():
    _, private = _violations()
    known = set(ALLOWED_PRIVATE)
    assert private - known == set(), sorted(private - known)
    assert known - private == set(), f"no longer needed: {sorted(known - private)}"


ALLOWED_PRIVATE: dict[tuple[str, str], str] = {
    ("skymosaic._display", "skymosaic.io._export"):
        "export sources not exported by skymosaic.io",
    ("skymosaic._display", "skymosaic.io._stretch"):
        "stretch types not exported by skymosaic.io",
    ("skymosaic._display", "skymosaic.io._writer"):
        "writer helpers not exported by skymosaic.io (shrink_planes, mosaic_header)",
    ("skymosaic._display", "skymosaic.photometry._color"):
        "colour calibration types not exported by skymosaic.photometry",
    ("skymosaic._manifest", "skymosaic.astrometry._cache"):
        "content_hash: belongs with the fingerprints at the bottom",
    ("skymosaic._manifest", "skymosaic.io._writer"):
        "writer helpers not exported by skymosaic.io (shrink_planes, mosaic_header)",
    ("skymosaic.assemble._coadd", "skymosaic.backend._reproject"):
        "resample_weighted not exported by skymosaic.backend",
    ("skymosaic.assemble._coadd", "skymosaic.io._frames"):
        "FrameInfo/FrameError/load_frame: public in skymosaic.io; import line to change",
    ("skymosaic.assemble._coadd", "skymosaic.photometry._linefit"):
        "line fit and noise estimate used by stack and assemble",
    ("skymosaic.assemble._coadd", "skymosaic.reproject._grid"):
        "OutputGrid: public in skymosaic.reproject; import line to change",
    ("skymosaic.assemble._coadd", "skymosaic.reproject._mapping"):
        "pixel_map: public in skymosaic.reproject; import line to change",
    ("skymosaic.assemble._coadd", "skymosaic.reproject._resample"):
        "kernel tables and resample (backend <-> reproject cycle)",
    ("skymosaic.assemble._phase5", "skymosaic.reproject._grid"):
        "OutputGrid: public in skymosaic.reproject; import line to change",
    ("skymosaic.assemble._sources", "skymosaic.io._frames"):
        "FrameInfo/FrameError/load_frame: public in skymosaic.io; import line to change",
    ("skymosaic.astrometry._cache", "skymosaic.io._writer"):
        "writer helpers not exported by skymosaic.io (shrink_planes, mosaic_header)",
    ("skymosaic.astrometry._solve", "skymosaic.io._frames"):
        "FrameInfo/FrameError/load_frame: public in skymosaic.io; import line to change",
    ("skymosaic.astrometry._validate", "skymosaic.io._frames"):
        "FrameInfo/FrameError/load_frame: public in skymosaic.io; import line to change",
    ("skymosaic.backend._reproject", "skymosaic.reproject._resample"):
        "kernel tables and resample (backend <-> reproject cycle)",
    ("skymosaic.blend._blend", "skymosaic.photometry._overlaps"):
        "overlap geometry used by blend",
    ("skymosaic.grid._run", "skymosaic.io._export"):
        "export sources not exported by skymosaic.io",
    ("skymosaic.grid._run", "skymosaic.io._writer"):
        "writer helpers not exported by skymosaic.io (shrink_planes, mosaic_header)",
    ("skymosaic.io._stream", "skymosaic.assemble._coadd"):
        "coadd helpers (DiskMosaic, ordered_window, resample_source) not yet one layer down",
    ("skymosaic.pipeline.photometry", "skymosaic.io._stream"):
        "the on-disk mosaic readers: io/__init__ cannot export them while _stream imports assemble",
    ("skymosaic.pipeline.write", "skymosaic.io._stream"):
        "the on-disk mosaic readers: io/__init__ cannot export them while _stream imports assemble",
    ("skymosaic.report._dzi", "skymosaic.io._stretch"):
        "stretch types not exported by skymosaic.io",
    ("skymosaic.report._html", "skymosaic.io._stream"):
        "the on-disk mosaic readers: io/__init__ cannot export them while _stream imports assemble",
    ("skymosaic.report._html", "skymosaic.io._stretch"):
        "stretch types not exported by skymosaic.io",
    ("skymosaic.report._html", "skymosaic.io._writer"):
        "writer helpers not exported by skymosaic.io (shrink_planes, mosaic_header)",
    ("skymosaic.report._mosaic", "skymosaic.io._stream"):
        "the on-disk mosaic readers: io/__init__ cannot export them while _stream imports assemble",
    ("skymosaic.report._serve", "skymosaic.io._stretch"):
        "stretch types not exported by skymosaic.io",
    ("skymosaic.report._targets", "skymosaic.io._writer"):
        "writer helpers not exported by skymosaic.io (shrink_planes, mosaic_header)",
    ("skymosaic.reproject._resample", "skymosaic.backend._kernels"):
        "kernel weights shared by host and device (issue 18 item 4)",
    ("skymosaic.stack._combine", "skymosaic.assemble._coadd"):
        "coadd helpers (DiskMosaic, ordered_window, resample_source) not yet one layer down",
    ("skymosaic.stack._normalize", "skymosaic.photometry._linefit"):
        "line fit and noise estimate used by stack and assemble",
    ("skymosaic.stack._starnorm", "skymosaic.photometry._linefit"):
        "line fit and noise estimate used by stack and assemble",
    ("skymosaic.stack._starnorm", "skymosaic.photometry._masks"):
        "nanmedian_rows used by stack",
    ("skymosaic.stack.classic", "skymosaic.assemble._coadd"):
        "coadd helpers (DiskMosaic, ordered_window, resample_source) not yet one layer down",
    ("skymosaic.stack.classic", "skymosaic.io._frames"):
        "FrameInfo/FrameError/load_frame: public in skymosaic.io; import line to change",
    ("skymosaic.stack.master", "skymosaic.assemble._coadd"):
        "coadd helpers (DiskMosaic, ordered_window, resample_source) not yet one layer down",
    ("skymosaic.stack.master", "skymosaic.assemble._sources"):
        "FileSource: public in skymosaic.assemble; import line to change",
    ("skymosaic.stack.master", "skymosaic.io._frames"):
        "FrameInfo/FrameError/load_frame: public in skymosaic.io; import line to change",
    ("skymosaic.stack.master", "skymosaic.io._writer"):
        "writer helpers not exported by skymosaic.io (shrink_planes, mosaic_header)",
    ("skymosaic.stack.master", "skymosaic.reproject._grid"):
        "OutputGrid: public in skymosaic.reproject; import line to change",
}
