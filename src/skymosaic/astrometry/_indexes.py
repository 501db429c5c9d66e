"""astrometry.net index files: where they are and which quad sizes they cover.

An index file is a FITS file whose primary header has ``SCALE_L``/``SCALE_U`` (the quad
sizes it holds, in radians), ``INDEXID`` and ``HEALPIX``. Folders are found in the
``add_path`` lines of ``astrometry.cfg`` and in the usual install locations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits

__all__ = [
    "ASTROMETRY_CFG_FILES",
    "DEFAULT_INDEX_DIRS",
    "IndexFile",
    "astrometry_cfg_paths",
    "find_index_files",
    "index_search_dirs",
]

#: Where astrometry.net index files are installed by Debian/Ubuntu packages and by
#: ``make install`` of the upstream sources.
DEFAULT_INDEX_DIRS = (Path("/usr/share/astrometry"), Path("/usr/local/astrometry/data"),
                      Path("/usr/local/share/astrometry"))
#: astrometry.net backend configurations (``add_path`` lines name index folders).
ASTROMETRY_CFG_FILES = (Path("/etc/astrometry.cfg"),
                        Path("/usr/local/astrometry/etc/astrometry.cfg"),
                        Path("/usr/local/etc/astrometry.cfg"))

_RAD_TO_ARCMIN = 180.0 * 60.0 / math.pi


@dataclass(frozen=True)
class IndexFile:
    """One astrometry.net index file and the quad sizes it covers (arcmin)."""

    path: Path
    index_id: int | None
    scale_low_arcmin: float | None
    scale_high_arcmin: float | None
    healpix: int | None
    size_mb: float

    def to_dict(self) -> dict:
        return {"path": str(self.path), "index_id": self.index_id,
                "scale_arcmin": [None if v is None else round(v, 2)
                                 for v in (self.scale_low_arcmin, self.scale_high_arcmin)],
                "healpix": self.healpix, "size_mb": round(self.size_mb, 1)}


def astrometry_cfg_paths(cfg_files: Iterable[Path] = ASTROMETRY_CFG_FILES) -> list[Path]:
    """The ``add_path`` folders of the astrometry.net configuration files that exist."""
    out: list[Path] = []
    for cfg in cfg_files:
        try:
            text = Path(cfg).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 2 and parts[0] == "add_path":
                folder = Path(parts[1])
                if not folder.is_absolute():
                    folder = Path(cfg).parent / folder
                out.append(folder)
    return list(dict.fromkeys(out))


def index_search_dirs(extra: Sequence[Path] = (), *,
                      cfg_files: Iterable[Path] = ASTROMETRY_CFG_FILES,
                      defaults: Iterable[Path] = DEFAULT_INDEX_DIRS) -> list[Path]:
    """Folders searched for index files: ``extra``, the ``add_path``s, then the defaults."""
    folders = [*map(Path, extra), *astrometry_cfg_paths(cfg_files), *map(Path, defaults)]
    return list(dict.fromkeys(folders))


def _index_file(path: Path) -> IndexFile | None:
    try:
        header = fits.getheader(path)
    except (OSError, ValueError):
        return None
    if "SCALE_U" not in header and header.get("AN_FILE") is None:
        return None

    def arcmin(key: str) -> float | None:
        value = header.get(key)
        return float(value) * _RAD_TO_ARCMIN if isinstance(value, (int, float)) else None

    index_id = header.get("INDEXID")
    healpix = header.get("HEALPIX")
    return IndexFile(
        path=path,
        index_id=int(index_id) if isinstance(index_id, int) else None,
        scale_low_arcmin=arcmin("SCALE_L"),
        scale_high_arcmin=arcmin("SCALE_U"),
        healpix=int(healpix) if isinstance(healpix, int) and healpix >= 0 else None,
        size_mb=path.stat().st_size / 2**20,
    )


def find_index_files(folders: Iterable[Path]) -> list[IndexFile]:
    """The astrometry.net index files (``*.fits`` with index cards) in ``folders``."""
    found: dict[Path, IndexFile] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.fits")):
            real = path.resolve()
            if real in found:
                continue
            index = _index_file(path)
            if index is not None:
                found[real] = index
    return sorted(found.values(), key=lambda i: (i.scale_low_arcmin or 0.0, str(i.path)))


