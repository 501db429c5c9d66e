"""One list of choices, every config field read.

(a) Each ``Literal`` field of the config model offers exactly the choices (same order) of the
tuple that the implementing module owns and validates against.
(b) Each config field is read somewhere in the package outside ``config.py``.
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

import skymosaic
from skymosaic import SURFACE_NAMES
from skymosaic.assemble import COADD_REJECT, COADD_WEIGHTINGS
from skymosaic.astrometry import SOLVER_CHOICES
from skymosaic.backend import USE_GPU_CHOICES
from skymosaic.config import LOG_LEVELS, Config, ConfigError, load_config
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

#: (section, field) -> the module tuple its Literal must equal
FIELD_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("input", "bayer_pattern"): BAYER_PATTERNS,
    ("solve", "solver"): SOLVER_CHOICES,
    ("reproject", "kernel"): KERNELS,
    ("reproject", "edge"): EDGES,
    ("output", "rotation"): ROTATIONS,
    ("output", "projection"): PROJECTIONS,
    ("output", "export"): EXPORT_FORMATS,
    ("coadd", "weighting"): COADD_WEIGHTINGS,
    ("coadd", "reject"): COADD_REJECT,
    ("grid", "blend"): GRID_BLENDS,
    ("stack", "normalization"): NORMALIZATION_METHODS,
    ("stack", "sky_surface"): SURFACE_NAMES,
    ("stack", "weighting"): WEIGHTING_METHODS,
    ("stack", "rejection"): REJECTION_METHODS,
    ("stack", "combine"): COMBINE_METHODS,
    ("photometry", "gain_from"): GAIN_SOURCES,
    ("photometry", "match_kernel"): KERNELS,
    ("photometry", "sky_surface"): SKY_SURFACES,
    ("color", "mode"): COLOR_MODES,
    ("color", "white"): COLOR_WHITE,
    ("color", "curve"): STRETCH_CURVES,
    ("run", "use_gpu"): USE_GPU_CHOICES,
    ("run", "log_level"): LOG_LEVELS,  # logging's level names, owned by config itself
}
#: Literal fields that are not a choice list: photometry.gauge is 'mean' or an input index
#: (a keyword next to a number, not a set of methods)
NOT_A_CHOICE = {("photometry", "gauge"): ("mean",)}

#: Fields no module reads by name, each with why. The value is the name read in their place
#: (checked to be read), or None where nothing is read on purpose.
READ_OTHERWISE: dict[tuple[str, str], str | None] = {
    # read through the Config.memory_budget_bytes property (bytes for every module)
    ("run", "memory_budget_mb"): "memory_budget_bytes",
    # deprecated and ignored: only its validator in config.py reads it (to warn)
    ("photometry", "background_plane"): None,
    # DEFECT, kept visible: no phase reads it (the verify phase always runs); to be wired or
    # deprecated (reported on branch `choices`, issue 18 item 5)
    ("input", "verify_pixels"): None,
}


def _literal_choices(annotation: object) -> tuple[object, ...]:
    """The Literal values inside an annotation (through ``X | None``, ``list[X]``), in order."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    out: tuple[object, ...] = ()
    for arg in typing.get_args(annotation):
        out += _literal_choices(arg)
    return out


def _sections() -> dict[str, type[BaseModel]]:
    return {name: f.annotation for name, f in Config.model_fields.items()}  # type: ignore[misc]


def _literal_fields() -> dict[tuple[str, str], tuple[object, ...]]:
    return {(s, k): choices for s, model in _sections().items()
            for k, f in model.model_fields.items() if (choices := _literal_choices(f.annotation))}


def test_literal_choices_are_the_module_tuples() -> None:
    found = _literal_fields()
    assert set(found) == set(FIELD_CHOICES) | set(NOT_A_CHOICE), (
        "a Literal config field must be listed in FIELD_CHOICES with the tuple of its module")
    for key, tup in {**FIELD_CHOICES, **NOT_A_CHOICE}.items():
        assert isinstance(tup, tuple) and all(isinstance(c, str) for c in tup), key
        assert found[key] == tup, f"{'.'.join(key)}: config {found[key]} != module {tup}"


def test_literal_fields_refuse_what_the_module_refuses() -> None:
    """The model validates against the same tuple: a value outside it is a ConfigError whose
    message lists the module's choices."""
    with pytest.raises(ConfigError, match=r"grid\.blend.*'pyramid', 'feather' or 'mean'"):
        load_config(None, {"grid.blend": "average"})
    assert load_config(None, {"grid.blend": GRID_BLENDS[-1]}).grid.blend == "mean"


# ------------------------------------------------------------------ every field read
def _read_names(root: Path, skip: set[Path]) -> set[str]:
    """Every attribute name accessed (``x.name``) and every string constant that is a bare
    identifier (``model_dump(include={...})`` keys, ``getattr`` names) in ``root``'s modules."""
    names: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if path.resolve() in skip:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value.isidentifier()):
                names.add(node.value)
    return names


def _unread(sections: dict[str, type[BaseModel]], names: set[str],
            allowed: dict[tuple[str, str], str | None]) -> list[str]:
    """Sections and fields whose name is not in ``names`` and not allowed (allowed fields with
    a stand-in name need that name read)."""
    out = [s for s in sections if s not in names]
    for s, model in sections.items():
        for k in model.model_fields:
            if (s, k) in allowed:
                stand_in = allowed[(s, k)]
                if stand_in is not None and stand_in not in names:
                    out.append(f"{s}.{k} (via {stand_in})")
            elif k not in names:
                out.append(f"{s}.{k}")
    return out


def test_every_config_field_is_read() -> None:
    """Each field of each section is read outside config.py by its name.

    Why it fails for a new field that nothing reads: a field declared in config.py alone has
    its name only in config.py (skipped) and in the model; no ``.name`` attribute access and no
    ``"name"`` string exists elsewhere, so `_unread` lists it (the known-answer test below
    checks exactly that on a made-up section). A field read through a generic mechanism
    belongs in READ_OTHERWISE with its reason. The check is by name, so a new field named like
    an attribute of some other object (``enabled``) can pass unread: give fields specific names.
    """
    package = Path(skymosaic.__file__).resolve().parent
    names = _read_names(package, skip={package / "config.py"})
    assert _unread(_sections(), names, READ_OTHERWISE) == []
    for key in READ_OTHERWISE:  # the allow-list holds no stale entries
        assert key[1] in _sections()[key[0]].model_fields, key


def test_unread_field_is_found() -> None:
    """Known answer: a section with one field read and one never read."""

    class Probe(BaseModel):
        read_me: int = Field(default=1)
        never_read_anywhere: int = Field(default=2)
        via_property: int = Field(default=3)

    package = Path(skymosaic.__file__).resolve().parent
    names = _read_names(package, skip=set()) | {"probe", "read_me"}
    assert "never_read_anywhere" not in names
    assert _unread({"probe": Probe}, names, {}) == [
        "probe.never_read_anywhere", "probe.via_property"]
    assert _unread({"probe": Probe}, names, {("probe", "via_property"): "memory_budget_bytes",
                                            ("probe", "never_read_anywhere"): None}) == []
    assert _unread({"probe": Probe}, names, {("probe", "via_property"): "no_such_name_read"}) == [
        "probe.never_read_anywhere", "probe.via_property (via no_such_name_read)"]
    assert _unread({"ghost_section": Probe}, names, {})[0] == "ghost_section"
