"""Each options object is built from the configuration by its own ``from_config``, and a
configuration field that the object is said to carry really reaches it.

For every (options class, config section) below, each field of the section is changed to
another valid value, one at a time: the built options must change, unless the field is in the
section's list of fields read elsewhere (with where). A field added to a section and forgotten
in ``from_config`` fails here; so does a listed field that the options start to carry.
"""

from __future__ import annotations

import math
import typing

import pytest

from skymosaic.assemble import CoaddOptions
from skymosaic.astrometry import SolveOptions
from skymosaic.config import Config, load_config
from skymosaic.io._stretch import StretchOptions
from skymosaic.photometry import ColorOptions, PhotometryOptions
from skymosaic.stack import StackSettings
from skymosaic.stack.quality import QualitySettings

#: (options built from a Config, the section, {field: where it is read instead})
CASES = [
    (lambda c: CoaddOptions.from_config(c, threads=1), "reproject", {}),
    (lambda c: CoaddOptions.from_config(c, threads=1), "coadd",
     {"weighting": "pipeline.stack (each source's weight)"}),
    (lambda c: SolveOptions.from_config(c, threads=4), "solve",
     {"enabled": "astrometry.solve_missing_wcs", "validate_existing": "pipeline.discover",
      "max_scale_ratio": "astrometry.solve_missing_wcs"}),
    (StretchOptions.from_config, "color",
     {"mode": "_display.plan_display", "white": "ColorOptions", "min_stars": "ColorOptions",
      "star_color": "ColorOptions"}),
    (ColorOptions.from_config, "color",
     {"mode": "_display.plan_display", "target_background": "StretchOptions",
      "shadow_clip": "StretchOptions", "curve": "StretchOptions",
      "highlight_percentile": "StretchOptions"}),
    (StackSettings.from_config, "stack",
     {"enabled": "stack.classic.stack_groups", "min_frames": "stack.classic.stack_groups"}),
    (QualitySettings.from_config, "quality",
     {"enabled": "pipeline.verify", "detect_sigma": "pipeline.verify (frame measurements)",
      "session_gap_hours": "stack.classic.select_quality (sessions)"}),
    (PhotometryOptions.from_config, "photometry",
     {"enabled": "pipeline.photometry", "match_kernel": "assemble.match_sources",
      "background_plane": "photometry.normalize_tiles caller (grid)",
      "coverage_renorm": "pipeline.coadd", "coverage_sigma_px": "pipeline.coadd",
      "coverage_clip": "pipeline.coadd", "diagnostics": "pipeline.photometry"}),
]


def _candidates(annotation, value) -> list:  # noqa: PLR0911 - one return per field type
    """Other values a field of this type may take (the first that validates is used)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return [a for a in args if a != value]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return [c for a in args if a is not type(None) for c in _candidates(a, value)]
    if annotation is bool:
        return [not value]
    if annotation is int:
        return [value + 1, value - 1] if isinstance(value, int) else [2, 8, 100]
    if annotation is float:
        base = value if isinstance(value, float) and math.isfinite(value) else 1.0
        return [base * 1.5 + 0.1, base * 0.5, 0.7, base * 0.999]
    if origin in (list, tuple):
        if isinstance(value, (list, tuple)) and value:
            elem = args[0] if args else type(value[0])
            return [[c, *value[1:]] for c in _candidates(elem, value[0])] + [list(value[:-1])]
        return [["x"]]
    if annotation is str:
        return [f"{value}_x"]
    return ["/tmp/skymosaic-test-path"]


def _changed(config: Config, section: str, name: str):
    hints = typing.get_type_hints(type(getattr(config, section)), include_extras=False)
    value = getattr(getattr(config, section), name)
    for candidate in _candidates(hints[name], value):
        try:
            return load_config(None, {f"{section}.{name}": candidate})
        except Exception:
            continue
    pytest.fail(f"no other valid value found for {section}.{name}")


@pytest.mark.parametrize(("build", "section", "elsewhere"), CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_every_field_of_the_section_reaches_the_options(build, section, elsewhere):
    base = load_config(None, {})
    reference = build(base)
    fields = type(getattr(base, section)).model_fields
    assert set(elsewhere) <= set(fields), "listed fields that the section does not have"
    for name in fields:
        changed = build(_changed(base, section, name))
        if name in elsewhere:
            assert changed == reference, (
                f"{section}.{name} now reaches {type(reference).__name__}: remove it from the "
                f"list of fields read elsewhere ({elsewhere[name]})")
        else:
            assert changed != reference, (
                f"{section}.{name} does not reach {type(reference).__name__}.from_config")
