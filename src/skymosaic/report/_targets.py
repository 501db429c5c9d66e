"""``OUT/index.html`` of a run with several targets: one card per target, linking to its report.

A folder with sky-disjoint targets gives one mosaic (and one report) per target in
``OUT/<target>/`` (`skymosaic.plan.targets`); this page lists them from ``OUT/targets.json``:
name, centre, frames used, status, the target's preview as a thumbnail and a link to its
own ``index.html``. Plain HTML, no script: it opens from the file system.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from skymosaic.io._writer import atomic_path
from skymosaic.report._html import ReportError

__all__ = ["write_targets_index"]


def write_targets_index(out: str | os.PathLike) -> Path:
    """Write ``out/index.html`` listing the targets of ``out/targets.json``.

    Raises
    ------
    ReportError
        When ``targets.json`` is missing or unreadable.
    """
    out = Path(out)
    path = out / "targets.json"
    try:
        listing = json.loads(path.read_text())
        rows = listing["targets"]
    except FileNotFoundError as err:
        raise ReportError(f"{path}: not found; is {out} a run with several targets?") from err
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ReportError(f"{path}: cannot be read: {err}") from err
    cards = [_card(out, row) for row in rows]
    left_out = [name for key in ("lone", "not_selected") for name in listing.get(key) or []]
    note = (f"<p class='note'>left out: {html.escape(', '.join(left_out))}</p>" if left_out else "")
    page = _PAGE.format(n=len(rows), cards="\n".join(cards), note=note)
    target = out / "index.html"
    with atomic_path(target, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target


def _card(out: Path, row: dict) -> str:
    name = str(row.get("name", "?"))
    folder = out / name
    ra, dec = (row.get("center_deg") or [float("nan"), float("nan")])[:2]
    try:
        run = json.loads((folder / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        run = {}
    preview = (run.get("products") or {}).get("preview")
    output = run.get("output") or {}
    size = "-"
    if output.get("shape"):
        h, w = output["shape"][-2:]
        size = f"{w} x {h} px, {output.get('channels', '?')} channel(s)"
    esc = html.escape
    thumb = (f"<img src='{esc(name)}/{esc(preview)}' alt='{esc(name)}'>"
             if preview and (folder / preview).is_file() else "<div class='none'>no preview</div>")
    title = esc(name)
    if (folder / "index.html").is_file():
        link = f"{esc(name)}/index.html"
        thumb, title = f"<a href='{link}'>{thumb}</a>", f"<a href='{link}'>{title}</a>"
    used = row.get("frames_used")
    rows = [("object", esc(str(row.get("object") or "-"))),
            ("centre", f"RA {ra:.4f}&deg;, Dec {dec:+.4f}&deg;"),
            ("frames", f"{used if used is not None else '-'} used of {row.get('n_frames', '-')}"),
            ("status", esc(str(row.get("status", "-")))),
            ("mosaic", esc(size))]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<div class='card'>{thumb}<h2>{title}</h2><table>{table}</table></div>"


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>skymosaic: {n} targets</title>
<style>
body {{ background: #111; color: #ddd; font: 14px sans-serif; margin: 1.5em; }}
h1 {{ font-size: 20px; font-weight: 600; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 1.2em; }}
.card {{ background: #1c1c1c; border: 1px solid #333; padding: 0.8em; width: 320px; }}
.card img, .card .none {{ width: 320px; height: 240px; object-fit: contain;
  background: #000; display: block; }}
.card .none {{ line-height: 240px; text-align: center; color: #777; }}
.card h2 {{ font-size: 16px; margin: 0.5em 0; }}
a {{ color: #7cc4ff; }}
th {{ text-align: left; color: #999; font-weight: normal; padding-right: 1em; }}
.note {{ color: #bbb; }}
</style>
</head>
<body>
<h1>skymosaic run: {n} targets</h1>
<div class="cards">
{cards}
</div>
{note}
</body>
</html>
"""
