"""Several sky-disjoint targets in one folder (docs/targets.md).

Known answers: frames of two fields 50 degrees apart form two targets, each mosaicked in
``OUT/<target>/`` exactly as a run of its frames alone would; a frame far from every other
one is left out with a warning naming it; ``--target``/``--region`` keep one target and the
single-target layout (``OUT/mosaic.fits``); a folder with one target is unchanged.
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest

from skymosaic.cli import main
from skymosaic.config import ConfigError, load_config
from skymosaic.io import read_mosaic
from skymosaic.pipeline import NoUsableFramesError, run_pipeline
from skymosaic.plan.targets import TargetError, split_targets, target_key
from skymosaic.synth import make_survey, write_survey

# --------------------------------------------------------------------------- unit tests


def _square(ra: float, dec: float, size: float = 0.5) -> np.ndarray:
    h = size / 2
    return np.array([[ra - h, dec - h], [ra + h, dec - h], [ra + h, dec + h], [ra - h, dec + h]])


def test_overlap_chain_is_one_target_and_far_groups_are_two():
    # a chain of 4 frames along RA (each overlaps the next by half), and 2 frames 20 deg away
    fps = np.stack([_square(100 + 0.25 * k, 10) for k in range(4)]
                   + [_square(120, 10), _square(120.1, 10)])
    split = split_targets(fps, objects=[None] * 6, names=[f"f{k}" for k in range(6)])
    assert [t.frames for t in split.targets] == [[0, 1, 2, 3], [4, 5]]
    assert split.lone == {}
    # centre of the chain: RA 100.375, Dec 10 (mean of unit vectors: Dec a hair above 10)
    assert split.targets[0].center[0] == pytest.approx(100.375, abs=1e-6)
    assert split.targets[0].name == "RA100.38_DEC+10.00"


def test_names_from_object_or_coordinates():
    fps = np.stack([_square(83.82, -5.39), _square(83.9, -5.39), _square(200, 40),
                    _square(200.1, 40), _square(300, 60), _square(300.1, 60), _square(10, 0),
                    _square(10.1, 0)])
    objects = ["", None,  # missing: coordinates
               "M 94", "M 94",  # shared: the object, sanitised
               "NGC 7023", "IC 1396",  # contradictory: coordinates
               "tiles", "tiles"]  # a folder the run itself writes: coordinates
    split = split_targets(fps, objects=objects, names=[f"f{k}" for k in range(8)])
    names = {tuple(t.frames): t.name for t in split.targets}
    assert names[(0, 1)] == "RA083.86_DEC-05.39"
    assert names[(2, 3)] == "M_94"
    assert re.fullmatch(r"RA300\.05_DEC\+60\.00", names[(4, 5)])
    assert names[(6, 7)] == "RA010.05_DEC+00.00"


def test_an_object_shared_by_two_far_groups_is_not_a_name():
    fps = np.stack([_square(10, 0), _square(10.1, 0), _square(50, 0), _square(50.1, 0)])
    split = split_targets(fps, objects=["M31"] * 4, names=list("abcd"))
    assert sorted(t.name for t in split.targets) == ["RA010.05_DEC+00.00", "RA050.05_DEC+00.00"]


def test_lone_frame_is_left_out_with_a_reason():
    fps = np.stack([_square(10, 0), _square(10.1, 0), _square(10.2, 0), _square(40, 0)])
    split = split_targets(fps, objects=[None] * 4, names=list("abcd"))
    assert [t.frames for t in split.targets] == [[0, 1, 2]]
    assert list(split.lone) == [3] and "lone frame" in split.lone[3] and "29.8" in split.lone[3]
    # two single frames far apart: neither is "lone" (no group of several to compare with)
    split = split_targets(fps[[0, 3]], objects=[None] * 2, names=["a", "d"])
    assert [t.frames for t in split.targets] == [[0], [1]] and split.lone == {}


def test_select_and_region():
    fps = np.stack([_square(10, 0), _square(10.1, 0), _square(50, 20), _square(50.1, 20)])
    objects = ["M 31", "M 31", "NGC7023", "NGC7023"]
    split = split_targets(fps, objects=objects, names=list("abcd"), select="m31")
    assert [t.name for t in split.targets] == ["M_31"] and split.not_selected == [2, 3]
    split = split_targets(fps, objects=objects, names=list("abcd"), region=(50.0, 20.0, 1.0))
    assert [t.frames for t in split.targets] == [[2, 3]] and split.not_selected == [0, 1]
    with pytest.raises(TargetError, match=r"no target named 'M42'.*2 target\(s\): M_31, NGC7023"):
        split_targets(fps, objects=objects, names=list("abcd"), select="M42")
    with pytest.raises(TargetError, match="no frame has its centre within 1 deg of RA 200"):
        split_targets(fps, objects=objects, names=list("abcd"), region=(200.0, 0.0, 1.0))
    assert target_key("M 94") == target_key("m94") == target_key("M_94") == "m94"


def test_region_config_is_validated():
    assert load_config(None, {"targets.region": "83.8,-5.4,2"}).targets.region == (83.8, -5.4, 2.0)
    with pytest.raises(ConfigError, match="RA,DEC,RADIUS"):
        load_config(None, {"targets.region": "83.8,-5.4"})
    with pytest.raises(ConfigError, match="RADIUS"):
        load_config(None, {"targets.region": [83.8, -5.4, 0]})


# --------------------------------------------------------------------------- end to end

_SURVEY = dict(n_x=2, n_y=1, frame_shape=(64, 80), channels=1, frames_per_pointing=2, seed=1)


def _write(folder, center, obj, prefix, **kw):
    survey = make_survey(center=center, **{**_SURVEY, **kw})
    for f in survey.frames:
        f.header["OBJECT"] = obj
    return write_survey(survey, folder, prefix=prefix)


def _config(**overrides):
    return load_config(None, {"run.threads": 2, "quality.enabled": False, "output.preview": False,
                              **overrides})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets")
    a = _write(root / "a", (150.0, 2.0), "M 94", "m94")
    b = _write(root / "b", (200.0, 40.0), "NGC 7023", "ngc", seed=2)
    lone = _write(root / "lone", (20.0, -30.0), "stray", "stray", n_x=1, frames_per_pointing=1)
    mixed = root / "mixed"
    mixed.mkdir()
    for p in [*a, *b, *lone]:
        (mixed / p.name).symlink_to(p)
    return {"root": root, "a": a, "b": b, "lone": lone, "mixed": mixed}


@pytest.fixture(scope="module")
def mixed_run(folders):
    logger = logging.getLogger("skymosaic")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        result = run_pipeline([folders["mixed"]], folders["root"] / "out", _config())
    finally:
        logger.removeHandler(handler)
    return result, [r.getMessage() for r in records]


def test_two_targets_give_two_mosaics(folders, mixed_run):
    result, _ = mixed_run
    out = folders["root"] / "out"
    assert [r.out_dir for r in result.targets] == [out / "M_94", out / "NGC_7023"]
    for sub in ("M_94", "NGC_7023"):
        assert (out / sub / "mosaic.fits").is_file() and (out / sub / "manifest.json").is_file()
        report = json.loads((out / sub / "run.json").read_text())
        assert report["status"] == "ok" and report["frames"]["used"] == 4
        assert report["target"]["name"] == sub
    assert not (out / "mosaic.fits").exists()
    listing = json.loads((out / "targets.json").read_text())
    rows = {t["name"]: t for t in listing["targets"]}
    assert sorted(rows) == ["M_94", "NGC_7023"]
    assert rows["M_94"]["object"] == "M 94" and rows["M_94"]["n_frames"] == 4
    assert rows["M_94"]["center_deg"] == pytest.approx([150.0, 2.0], abs=0.01)
    assert rows["NGC_7023"]["status"] == "ok"
    assert rows["NGC_7023"]["mosaic"] == str(out / "NGC_7023" / "mosaic.fits")
    top = json.loads((out / "run.json").read_text())
    assert top["status"] == "ok" and top["frames"]["used"] == 8
    # OUT/index.html lists the targets and links to their own reports and footprints
    page = (out / "index.html").read_text()
    assert "2 targets" in page and "M_94/index.html" in page and "NGC_7023/index.html" in page
    assert "stray" in page  # the lone frame, left out
    for sub in ("M_94", "NGC_7023"):
        assert (out / sub / "index.html").is_file()
        footprints = json.loads((out / sub / "run.json").read_text())["footprints"]
        assert len(footprints) == 4


def test_report_command_rebuilds_every_target(folders, mixed_run):
    out = folders["root"] / "out"
    (out / "index.html").unlink()
    (out / "M_94" / "index.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "index.html").is_file() and (out / "M_94" / "index.html").is_file()


def test_lone_frame_is_left_out_with_a_warning(folders, mixed_run):
    result, warnings = mixed_run
    lone = folders["lone"][0]
    assert any(lone.name in w and "lone frame" in w for w in warnings)
    rejected = result.report["frames"]["rejected"]
    assert [k for k in rejected if lone.name in k] and "lone frame" in next(iter(rejected.values()))
    assert result.report["targets"]["lone"] == [lone.name]
    for r in result.targets:
        assert lone.name not in {f["path"].rsplit("/", 1)[-1] for f in r.report["frames"]["list"]}


@pytest.mark.parametrize(("key", "name"), [("a", "M_94"), ("b", "NGC_7023")])
def test_each_mosaic_equals_its_target_run_alone(folders, mixed_run, key, name):
    alone = run_pipeline([folders[key][0].parent], folders["root"] / f"alone_{key}", _config())
    assert not alone.targets
    assert alone.mosaic_path == folders["root"] / f"alone_{key}" / "mosaic.fits"
    data, wcs, weight = read_mosaic(alone.mosaic_path)
    split, swcs, sweight = read_mosaic(folders["root"] / "out" / name / "mosaic.fits")
    assert swcs.to_header_string() == wcs.to_header_string()
    np.testing.assert_allclose(split, data, rtol=1e-5, atol=1e-4, equal_nan=True)
    np.testing.assert_allclose(sweight, weight, rtol=1e-5, equal_nan=True)


def test_target_option_picks_one(folders, tmp_path):
    out = tmp_path / "one"
    assert main(["run", str(folders["mixed"]), "-o", str(out), "--target", "ngc7023",
                 "--threads", "2", "--no-preview", "-c", str(_no_quality(tmp_path))]) == 0
    report = json.loads((out / "run.json").read_text())
    assert (out / "mosaic.fits").is_file() and not (out / "targets.json").exists()
    used = {f["path"].rsplit("/", 1)[-1] for f in report["frames"]["list"] if f["used"]}
    assert used == {p.name for p in folders["b"]}
    assert sorted(report["targets"]["found"]) == ["M_94", "NGC_7023", "stray"]
    others = [*folders["a"], *folders["lone"]]
    assert sorted(report["targets"]["not_selected"]) == sorted(p.name for p in others)


def test_unknown_target_is_a_clear_error(folders, tmp_path, capsys):
    assert main(["run", str(folders["mixed"]), "-o", str(tmp_path / "x"), "--target", "M42",
                 "-c", str(_no_quality(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "no target named 'M42'" in err and "M_94" in err and "NGC_7023" in err


def test_region_picks_the_frames_inside(folders, tmp_path):
    config = _config(**{"targets.region": "150,2,1"})
    result = run_pipeline([folders["mixed"]], tmp_path / "r", config)
    assert not result.targets and result.report["frames"]["used"] == 4
    assert result.mosaic_path == tmp_path / "r" / "mosaic.fits"


def test_split_off_is_one_mosaic_of_everything(folders, tmp_path):
    # 50 deg apart: one grid over both would be huge, which the pre-flight check refuses
    with pytest.raises(Exception, match="pre-flight check failed"):
        run_pipeline([folders["a"][0].parent, folders["b"][0].parent], tmp_path / "all",
                     _config(**{"targets.split": False}))
    assert not (tmp_path / "all" / "mosaic.fits").exists()


def test_single_target_folder_layout_is_unchanged(folders, tmp_path):
    result = run_pipeline([folders["a"][0].parent], tmp_path / "single", _config())
    assert not result.targets and not (tmp_path / "single" / "targets.json").exists()
    assert result.report["targets"]["targets"][0]["name"] == "M_94"
    assert (tmp_path / "single" / "mosaic.fits").is_file()


def test_empty_region_is_a_clear_error(folders, tmp_path):
    message = "no frame has its centre within 1 deg of RA 0, Dec 89"
    with pytest.raises(NoUsableFramesError, match=message):
        run_pipeline([folders["mixed"]], tmp_path / "none", _config(**{"targets.region": "0,89,1"}))


def _no_quality(tmp_path):
    path = tmp_path / "noq.toml"
    path.write_text("[quality]\nenabled = false\n")
    return path


# --------------------------------------------------------------------------- real data


def test_seestar_m94_and_ngc7023_give_two_mosaics(testdata, tmp_path):
    """Three real M94 frames and the two NGC 7023 frames (62.7 deg apart) in one folder:
    two mosaics, every frame used (each target is its own quality session)."""
    folder = testdata / "seestar_s50_osc"
    m94 = sorted((folder / "raw").glob("2_*M_94*.fit.gz"))[:3]
    ngc = sorted((folder / "raw").glob("sample_Light_NGC_7023_*.fit.gz"))
    if len(m94) < 3 or len(ngc) < 2:
        pytest.skip(f"expected M94 and NGC 7023 frames in {folder / 'raw'}")
    inputs = tmp_path / "mixed"
    inputs.mkdir()
    for p in [*m94, *ngc]:
        (inputs / p.name).symlink_to(p)
    out = tmp_path / "out"
    config = load_config(None, {"run.threads": 2, "output.preview": False,
                                "input.wcs_dirs": [str(folder / "wcs")],
                                "output.pixel_scale_arcsec": 9.5, "photometry.diagnostics": False})
    result = run_pipeline([inputs], out, config)
    rows = json.loads((out / "targets.json").read_text())["targets"]
    assert [(t["n_frames"], t["status"]) for t in rows] == [(3, "ok"), (2, "ok")]
    assert all((out / t["name"] / "mosaic.fits").is_file() for t in rows)
    assert result.report["frames"]["used"] == 5 and result.report["frames"]["rejected"] == {}
    m94_row = rows[0]
    assert m94_row["center_deg"][1] == pytest.approx(41.12, abs=0.5)  # M94: Dec +41.1
    sessions = {s["id"]: s for r in result.targets for s in r.report["sessions"]}
    assert sorted(s["frames"] for s in sessions.values()) == [2, 3]
    assert all(s["used"] == s["frames"] for s in sessions.values())
