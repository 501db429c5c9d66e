"""Quality sessions are observing nights (docs/quality.md, "Sessions").

Known answers: the night of a frame is the local date of the evening when the header has a
site longitude (noon to noon local mean solar time), else the frames split on gaps longer
than ``quality.session_gap_hours``; frames without DATE-OBS form one session. End to end,
two nights of one target, the second with a 30 % brighter sky (and the sqrt(1.3) larger
noise that brings), keep every frame of both nights, the brighter night's frames weigh
less, and a cloudy frame within the first night is still rejected.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pytest
from astropy.io import fits

from skymosaic.config import ConfigError, load_config
from skymosaic.io import load_frame, scan_frame
from skymosaic.pipeline import run_pipeline
from skymosaic.stack.quality import measure_quality, select_frames
from skymosaic.stack.sessions import observing_nights, parse_date_obs, session_keys
from skymosaic.synth import make_survey, make_truth_sky, write_survey

# --------------------------------------------------------------------------- nights


def test_night_spanning_utc_midnight_with_longitude_is_one_night():
    # Arizona (111.6 W): 02:00 UTC is 18:33 local on the 26th, 11:00 UTC is 03:33 on the 27th
    dates = ["2025-03-27T02:00:00", "2025-03-27T06:00:00", "2025-03-27T11:00:00"]
    assert observing_nights(dates, longitudes=[-111.6] * 3) == ["2025-03-26"] * 3
    # Europe (10 E): 22:30 UTC on the 26th to 03:30 UTC on the 27th, across both midnights
    dates = ["2025-03-26T22:30:00", "2025-03-26T23:50:00", "2025-03-27T03:30:00"]
    assert observing_nights(dates, longitudes=[10.0] * 3) == ["2025-03-26"] * 3


def test_longitude_puts_local_noon_between_nights_of_one_utc_date():
    # Australia (150 E): 01:00 UTC is 11:00 local (end of the night of the 25th), 09:00 UTC
    # is 19:00 local (start of the night of the 26th)
    dates = ["2025-03-26T01:00:00", "2025-03-26T09:00:00"]
    nights = observing_nights(dates, longitudes=[150.0, 150.0])
    assert nights == ["2025-03-25", "2025-03-26"]


def test_exposure_middle_dates_the_frame():
    # starts 30 min before local noon (10 E: 11:20 UTC), ends after it: its middle is after
    start = "2025-03-27T11:00:00"
    assert observing_nights([start], longitudes=[10.0]) == ["2025-03-26"]
    assert observing_nights([start], exposures=[3600.0], longitudes=[10.0]) == ["2025-03-27"]


def test_two_week_gap_is_two_nights_without_longitude():
    start = datetime(2024, 3, 15, 21, 0)
    dates = [(start + timedelta(minutes=10 * k)).isoformat() for k in range(4)]
    dates += [(start + timedelta(days=14, minutes=10 * k)).isoformat() for k in range(4)]
    assert observing_nights(dates, exposures=[60.0] * 8) == ["2024-03-15"] * 4 + ["2024-03-29"] * 4


def test_night_across_utc_midnight_without_longitude_is_one_night():
    start = datetime(2024, 3, 15, 22, 0)
    dates = [(start + timedelta(minutes=20 * k)).isoformat() for k in range(12)]  # to 01:40
    assert set(observing_nights(dates)) == {"2024-03-15"}


def test_gap_longer_than_the_limit_starts_a_new_night():
    dates = ["2024-03-01T19:00:00", "2024-03-01T19:10:00", "2024-03-01T23:30:00"]
    # 19:10 + 600 s ends at 19:20; 4 h 10 min later the next frame starts
    nights = observing_nights(dates, exposures=[600.0] * 3)
    assert nights == ["2024-03-01", "2024-03-01", "2024-03-01#2"]
    assert observing_nights(dates, exposures=[600.0] * 3, gap_hours=5.0) == ["2024-03-01"] * 3


def test_gaps_are_counted_per_group():
    # target a at 19:00 and 23:30, target b at 21:00 in between: a has a 4.5 h gap of its own
    dates = ["2024-03-01T19:00:00", "2024-03-01T21:00:00", "2024-03-01T23:30:00"]
    assert observing_nights(dates) == ["2024-03-01"] * 3
    nights = observing_nights(dates, groups=["a", "b", "a"])
    assert nights == ["2024-03-01", "2024-03-01", "2024-03-01#2"]


def test_no_date_obs_is_no_night():
    assert observing_nights([None, "", "not a date"]) == [None, None, None]


def test_date_forms():
    assert parse_date_obs("2025-03-27T01:45:13.123Z") == datetime(2025, 3, 27, 1, 45, 13, 123000)
    assert parse_date_obs("2025-03-27T03:45:13+02:00") == datetime(2025, 3, 27, 1, 45, 13)
    assert parse_date_obs("27/03/95") == datetime(1995, 3, 27)
    assert parse_date_obs("2025-13-40") is None


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="gap_hours must be a positive number"):
        observing_nights(["2024-03-01T19:00:00"], gap_hours=0)
    with pytest.raises(ValueError, match="got 2 dates but 1 exposures"):
        observing_nights(["a", "b"], exposures=[1.0])
    with pytest.raises(ConfigError, match="session_gap_hours"):
        load_config(None, {"quality.session_gap_hours": -1})


@pytest.mark.parametrize(("cards", "expected"), [
    ({"SITELONG": -111.6}, -111.6),
    ({"SITELONG": "-111 36 00"}, -111.6),
    ({"LONG-OBS": "10:30:00"}, 10.5),
    ({"OBSGEO-L": 370.0}, 10.0),
    ({"OBSGEO-X": 0.0, "OBSGEO-Y": 6378137.0, "OBSGEO-Z": 0.0}, 90.0),
    ({}, None),
])
def test_site_longitude_from_the_header(tmp_path, cards, expected):
    path = tmp_path / "f.fits"
    hdu = fits.PrimaryHDU(np.ones((8, 8), np.float32))
    hdu.header.update(cards)
    hdu.writeto(path)
    lon = scan_frame(path).site_longitude
    assert lon == pytest.approx(expected) if expected is not None else lon is None


def test_frames_without_date_form_one_session_per_target(tmp_path):
    paths = []
    for k, obj in enumerate(["M94", "M94", "M94", "M51"]):
        path = tmp_path / f"f{k}.fits"
        hdu = fits.PrimaryHDU(np.ones((8, 8), np.float32))
        hdu.header["OBJECT"] = obj
        hdu.writeto(path)
        paths.append(path)
    keys = session_keys([scan_frame(p) for p in paths])
    assert keys[0] == keys[1] == keys[2] != keys[3]
    assert keys[0].endswith("|")  # no night


# --------------------------------------------------------------------------- end to end

N1, N2 = 8, 5  # frames of the first and the (brighter) second night
CLOUDY = 2  # a frame of the first night taken through clouds
SIGMA, SKY = 10.0, 100.0


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory):
    """One pointing, 8 frames on 2024-03-15 and 5 two weeks later with a 30 % brighter sky
    (noise x sqrt(1.3)); frame 2 through clouds (85 % of the starlight lost, sky x 3)."""
    root = tmp_path_factory.mktemp("nights")
    truth = make_truth_sky(center=(150.0, 2.0), size_deg=(0.3, 0.3), pixel_scale_arcsec=4.0,
                           channels=1, fwhm_arcsec=10.0, seed=5, n_stars=3000)
    survey = make_survey(n_x=1, n_y=1, frame_shape=(96, 128), pixel_scale_arcsec=4.0, channels=1,
                         frames_per_pointing=N1 + N2, gain_range=(1, 1), offset_range=(0, 0),
                         noise_sigma=SIGMA, sky_level=SKY, sky_gradient=0.0, seed=5, jitter_px=2.0,
                         rotation_deg=0.5, truth=truth)
    rng = np.random.default_rng(1)
    for k, f in enumerate(survey.frames):
        second = k >= N1
        start = datetime(2024, 3, 15, 21, 0) + timedelta(days=14 * second,
                                                         seconds=70 * (k - N1 * second))
        f.header["DATE-OBS"] = start.isoformat(timespec="milliseconds")
        if second:
            extra = rng.normal(0.0, SIGMA * np.sqrt(0.3), f.data.shape).astype(np.float32)
            f.data += np.float32(0.3 * SKY) + extra
        if k == CLOUDY:
            # the sky's photon noise stays (x sqrt(3)): the dimmed stars sink into it
            sky_noise = rng.normal(0.0, SIGMA * np.sqrt(3.0), f.data.shape).astype(np.float32)
            f.data[:] = (f.data - SKY) * 0.15 + 3 * SKY + sky_noise
    paths = write_survey(survey, root / "frames")
    config = load_config(None, {"run.threads": 2, "output.preview": False})
    result = run_pipeline([root / "frames"], root / "out", config)
    return {"paths": paths, "result": result, "out": root / "out"}


def test_pooled_nights_would_reject_the_brighter_night(two_nights):
    """The data have teeth: judged as one session, the brighter night is rejected wholesale."""
    quals = [measure_quality(load_frame(scan_frame(p))) for p in two_nights["paths"]]
    pooled = select_frames(quals, [p.name for p in two_nights["paths"]])
    assert all(not ok for ok in pooled.accepted[N1:])


def test_every_frame_of_both_nights_is_used_but_the_cloudy_one(two_nights):
    report = two_nights["result"].report
    rejected = {k.rsplit("/", 1)[-1]: v for k, v in report["frames"]["rejected"].items()}
    cloudy = two_nights["paths"][CLOUDY].name
    assert list(rejected) == [cloudy]
    assert "background" in rejected[cloudy] and "star count" in rejected[cloudy]
    assert report["frames"]["used"] == N1 + N2 - 1


def test_the_brighter_night_weighs_less(two_nights):
    (tile,) = two_nights["result"].report["tiles"]
    weights = dict(zip(tile["frames"], np.ravel(tile["stack"]["frame_weights"]), strict=True))
    names = [p.name for p in two_nights["paths"]]
    first = [weights[n] for n in names[:N1] if n in weights]
    second = [weights[n] for n in names[N1:]]
    assert len(first) == N1 - 1 and len(second) == N2
    assert max(second) < min(first)
    # inverse variance: the added noise (30 % of the sky-limited variance) costs >= 15 %
    assert np.mean(second) / np.mean(first) < 0.85


def test_run_json_lists_the_nights(two_nights):
    report = json.loads((two_nights["out"] / "run.json").read_text())
    sessions = {s["night"]: s for s in report["sessions"]}
    assert sorted(sessions) == ["2024-03-15", "2024-03-29"]
    one, two = sessions["2024-03-15"], sessions["2024-03-29"]
    assert (one["frames"], one["used"], one["rejected"]) == (N1, N1 - 1, 1)
    assert (two["frames"], two["used"], two["rejected"]) == (N2, N2, 0)
    assert one["start"] == "2024-03-15T21:00:00" and one["object"] == "SYNTH"
    # the second night's sky is 30 ADU brighter; FWHM the same
    assert two["median_background"] - one["median_background"] == pytest.approx(0.3 * SKY, abs=3.0)
    assert two["median_noise"] > one["median_noise"]
    assert two["median_fwhm"] == pytest.approx(one["median_fwhm"], rel=0.1)


def test_the_brighter_night_weighs_less_in_direct_mode(two_nights, tmp_path):
    """Without master tiles, the coadd weights each frame by its inverse noise variance
    (`skymosaic.pipeline.frame_weight`): the same ordering."""
    config = load_config(None, {"run.threads": 2, "output.preview": False, "stack.enabled": False})
    result = run_pipeline([two_nights["paths"][0].parent], tmp_path / "direct", config)
    weights = {f["path"].rsplit("/", 1)[-1]: f["weight"] for f in result.report["frames"]["list"]}
    names = [p.name for p in two_nights["paths"]]
    first = [weights[n] for n in names[:N1] if n != names[CLOUDY]]
    second = [weights[n] for n in names[N1:]]
    assert max(second) < min(first)
