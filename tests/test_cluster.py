"""Tests of skymosaic.plan.cluster: grouping frames by sky position."""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pytest

from skymosaic.plan import Clustering, candidate_pairs, cluster_frames, pair_overlaps
from skymosaic.plan.cluster import _angle, _unit_vectors

FIELD_W, FIELD_H = 1.0, 0.7  # degrees, a Seestar-like landscape field


def _basis(ra: float, dec: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = _unit_vectors(np.array([ra, dec], float))
    east = np.array([-math.sin(math.radians(ra)), math.cos(math.radians(ra)), 0.0])
    north = np.cross(c, east)
    return c, east, north


def _deproject(ra: float, dec: float, xy: np.ndarray) -> np.ndarray:
    """Tangent-plane offsets (degrees, x east, y north) around (ra, dec) -> (..., 2) sky."""
    c, east, north = _basis(ra, dec)
    t = np.deg2rad(np.asarray(xy, float))
    v = c + t[..., :1] * east + t[..., 1:] * north
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    out = np.stack(
        [
            np.rad2deg(np.arctan2(v[..., 1], v[..., 0])) % 360.0,
            np.rad2deg(np.arcsin(np.clip(v[..., 2], -1, 1))),
        ],
        axis=-1,
    )
    return out


def rect_footprint(
    ra: float, dec: float, *, width: float = FIELD_W, height: float = FIELD_H, rotation: float = 0.0
) -> np.ndarray:
    """(4, 2) sky corners of a width x height field centred on (ra, dec), rotated."""
    hw, hh = width / 2, height / 2
    corners = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
    th = math.radians(rotation)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    return _deproject(ra, dec, corners @ rot.T)


def panel_survey(
    rng: np.random.Generator,
    ra0: float,
    dec0: float,
    *,
    nx: int = 3,
    ny: int = 3,
    subs_per_night: int = 8,
    overlap: float = 0.1,
    dither: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """A smart-telescope style nx x ny mosaic shot on two nights.

    Each panel is many subs dithered by ``dither`` of the field around its centre;
    panels are spaced so that neighbours overlap by ``overlap``. The second night
    has a small rotation and offset. Returns footprints (N, 4, 2) and the panel of
    each frame.
    """
    fps, panel = [], []
    step_x, step_y = FIELD_W * (1 - overlap), FIELD_H * (1 - overlap)
    for _night, (rot, off) in enumerate([(0.0, (0.0, 0.0)), (2.0, (0.015, -0.01))]):
        for j, i in itertools.product(range(ny), range(nx)):
            pxy = np.array([(i - (nx - 1) / 2) * step_x, (j - (ny - 1) / 2) * step_y])
            for _ in range(subs_per_night):
                d = rng.uniform(-dither, dither, 2) * [FIELD_W, FIELD_H] + off
                ra, dec = _deproject(ra0, dec0, pxy + d)
                fps.append(rect_footprint(ra, dec, rotation=rot + rng.normal(0, 0.2)))
                panel.append(j * nx + i)
    return np.array(fps), np.array(panel)


def _same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    pairs = {(int(a), int(b)) for a, b in zip(labels, truth, strict=False)}
    return len(pairs) == len(set(labels.tolist())) == len(set(truth.tolist()))


# --------------------------------------------------------------------------- overlap


def test_pair_overlap_known_values() -> None:
    a = rect_footprint(10.0, 0.0, width=1.0, height=1.0)
    fps = np.array(
        [
            a,
            rect_footprint(10.5, 0.0, width=1.0, height=1.0),  # half
            rect_footprint(10.5, 0.5, width=1.0, height=1.0),  # quarter
            rect_footprint(10.0, 0.0, width=0.5, height=0.5),  # inside: 1 of the smaller
            rect_footprint(12.0, 0.0, width=1.0, height=1.0),  # disjoint
            rect_footprint(10.0, 0.0, width=1.0, height=1.0, rotation=45.0),
            a[::-1],  # clockwise corners
        ]
    )
    got = pair_overlaps(fps, np.array([[0, k] for k in range(1, 7)]))
    # a rotated square of side 1 on another: octagon of area 2(sqrt2-1) = 0.828
    expected = [0.5, 0.25, 1.0, 0.0, 2 * (math.sqrt(2) - 1), 1.0]
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_overlap_symmetric() -> None:
    rng = np.random.default_rng(0)
    fps = np.array(
        [
            rect_footprint(*rng.uniform([0, -10], [2, -8]), rotation=rng.uniform(0, 90))
            for _ in range(40)
        ]
    )
    pairs = np.array(list(itertools.combinations(range(40), 2)))
    np.testing.assert_allclose(
        pair_overlaps(fps, pairs), pair_overlaps(fps, pairs[:, ::-1]), atol=1e-9
    )


# --------------------------------------------------------------------------- candidate pairs


@pytest.mark.parametrize("seed", range(4))
def test_candidate_pairs_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # clumps near RA 0 and near the pole, plus scatter
    radec = np.concatenate(
        [
            np.column_stack([rng.uniform(-3, 3, 150) % 360, rng.uniform(-3, 3, 150)]),
            np.column_stack([rng.uniform(0, 360, 100), rng.uniform(84, 90, 100)]),
            np.column_stack([rng.uniform(0, 360, 100), rng.uniform(-90, 90, 100)]),
        ]
    )
    vec = _unit_vectors(radec)
    radius = float(rng.uniform(0.5, 4.0))
    got = {tuple(p) for p in candidate_pairs(vec, radius).tolist()}
    sep = np.rad2deg(_angle(vec[:, None, :], vec[None, :, :]))
    i, j = np.nonzero(np.triu(sep <= radius, k=1))
    assert got == set(zip(i.tolist(), j.tolist(), strict=False))
    assert len(got) > 100


@pytest.mark.parametrize("seed", range(8))
def test_links_match_all_pairs_reference(seed: int) -> None:
    """Groups from the pruned KD-tree search equal components of an O(N^2) overlap scan."""
    rng = np.random.default_rng(seed)
    n = 150
    # a few dense dither clouds plus scattered frames of mixed sizes and rotations
    clouds = rng.uniform([-2.5, -1.5], [2.5, 1.5], (4, 2))
    pick = rng.integers(0, 5, n)
    xy = np.where(
        pick[:, None] < 4,
        clouds[np.minimum(pick, 3)] + rng.normal(0, 0.1, (n, 2)),
        rng.uniform([-2.5, -1.5], [2.5, 1.5], (n, 2)),
    )
    ra, dec = xy[:, 0] % 360, xy[:, 1] + (85.0 if seed % 4 == 3 else 0.0)
    scale = rng.uniform(0.5, 1.5, n)
    fps = np.array(
        [
            rect_footprint(
                r, d, width=FIELD_W * k, height=FIELD_H * k, rotation=rng.uniform(0, 180)
            )
            for r, d, k in zip(ra, dec, scale, strict=False)
        ]
    )
    min_overlap = [0.0, 0.1, 0.3, 0.5, 0.8][seed % 5]
    mounts = rng.choice(["EQ", "ALTZ"], n).tolist() if seed % 2 else None
    res = cluster_frames(fps, min_overlap=min_overlap, mounts=mounts)
    pairs = np.array(list(itertools.combinations(range(n), 2)))
    linked = pairs[pair_overlaps(fps, pairs) > min_overlap]
    if mounts is not None:
        linked = linked[[mounts[a] == mounts[b] for a, b in linked]]
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in linked:
        parent[find(a)] = find(b)
    truth = np.array([find(i) for i in range(n)])
    assert _same_partition(res.labels, truth)
    assert 0 < res.n_links <= len(linked)


# --------------------------------------------------------------------------- surveys


@pytest.mark.parametrize(
    ("ra0", "dec0"), [(150.0, 30.0), (0.0, 0.0), (359.8, -20.0), (45.0, 85.0), (0.0, 89.5)]
)
def test_panel_survey_two_nights(ra0: float, dec0: float) -> None:
    rng = np.random.default_rng(42)
    fps, panel = panel_survey(rng, ra0, dec0)
    res = cluster_frames(fps, min_overlap=0.5)
    assert res.n_groups == 9
    assert _same_partition(res.labels, panel)
    assert sorted(len(g) for g in res.groups) == [16] * 9
    assert res.isolated == []
    # with a looser link neighbouring panels (10 % overlap) chain into one group
    assert cluster_frames(fps, min_overlap=0.05).n_groups == 1


def test_ra_wrap_frames_group_together() -> None:
    rng = np.random.default_rng(1)
    ras = np.concatenate([rng.uniform(359.85, 359.95, 10), rng.uniform(0.05, 0.15, 10)])
    fps = np.array([rect_footprint(r, rng.uniform(-0.05, 0.05)) for r in ras])
    res = cluster_frames(fps)
    assert res.n_groups == 1 and res.groups[0] == list(range(20))
    # the centres computed from corners sit near RA 0, not 180
    res2 = cluster_frames(fps, center_fraction=0.5)
    assert res2.n_groups == 1


def test_centers_and_fov_without_footprints() -> None:
    centers = np.array([[359.95, 10.0], [0.05, 10.0], [0.0, 10.05], [20.0, 10.0]])
    res = cluster_frames(None, centers=centers, fov_deg=1.2, center_fraction=0.3)
    assert res.groups == [[0, 1, 2], [3]]
    assert res.isolated == [3]


# --------------------------------------------------------------------------- splitting


def _strip(n: int = 50, dec: float = 40.0) -> np.ndarray:
    ras = 100.0 + np.linspace(0.0, 0.3, n) / math.cos(math.radians(dec))
    return np.array([rect_footprint(r, dec) for r in ras])


def test_max_frames_splits_compactly() -> None:
    fps = _strip()
    whole = cluster_frames(fps)
    assert whole.n_groups == 1
    res = cluster_frames(fps, max_frames=12)
    sizes = [len(g) for g in res.groups]
    assert max(sizes) <= 12 and sum(sizes) == 50 and len(sizes) == math.ceil(50 / 12)
    assert sorted(itertools.chain.from_iterable(res.groups)) == list(range(50))  # once each
    # frames are ordered along the strip: every part is a run of consecutive frames
    for g in res.groups:
        assert g == list(range(g[0], g[0] + len(g)))


def test_max_frames_never_pads_small_groups() -> None:
    fps = _strip(5)
    res = cluster_frames(fps, max_frames=12)
    assert res.groups == [[0, 1, 2, 3, 4]]


def test_max_bytes_split() -> None:
    fps = _strip(40)
    res = cluster_frames(fps, max_bytes=10e6, frame_bytes=1e6)
    sizes = sorted(len(g) for g in res.groups)
    assert sizes == [10, 10, 10, 10]
    # per-frame sizes: parts balance bytes, not counts
    sizes_b = np.where(np.arange(40) < 10, 4e6, 1e6)
    res = cluster_frames(fps, max_bytes=20e6, frame_bytes=sizes_b)
    assert all(sizes_b[g].sum() <= 20e6 for g in res.groups)
    assert sorted(itertools.chain.from_iterable(res.groups)) == list(range(40))


def test_single_frame_over_byte_budget_warns(caplog: pytest.LogCaptureFixture) -> None:
    fps = _strip(2)
    with caplog.at_level(logging.WARNING, logger="skymosaic.plan.cluster"):
        res = cluster_frames(fps, max_bytes=1.0, frame_bytes=10.0)
    assert res.n_groups == 2 and "exceeds max_bytes" in caplog.text


# --------------------------------------------------------------------------- mounts, isolation


def test_mount_modes_never_mixed() -> None:
    fps = _strip(12)
    mounts = ["EQ", "altz", None] * 4
    res = cluster_frames(fps, mounts=mounts)
    assert res.n_groups == 3
    for g in res.groups:
        assert len({str(mounts[i]).upper() for i in g}) == 1


def test_isolated_frame_warning(caplog: pytest.LogCaptureFixture) -> None:
    fps = list(_strip(10))
    fps.append(rect_footprint(100.0, 40.0 + 0.95 * FIELD_H))  # near but not overlapping enough
    fps.append(rect_footprint(130.0, -5.0))  # far away: a bad WCS?
    names = [f"sub_{i:03d}.fit" for i in range(12)]
    with caplog.at_level(logging.WARNING, logger="skymosaic.plan.cluster"):
        res = cluster_frames(np.array(fps), names=names)
    assert res.n_groups == 3
    assert res.groups[0] == list(range(10))
    assert res.isolated == [11]
    assert "isolated frame sub_011.fit forms its own group; check its WCS" in caplog.text
    assert "sub_010.fit" not in caplog.text
    assert res.to_dict()["isolated"] == [11]


# --------------------------------------------------------------------------- determinism


def test_labels_deterministic_and_ordered() -> None:
    rng = np.random.default_rng(7)
    fps, _panel = panel_survey(rng, 80.0, 10.0, subs_per_night=3)
    extra = np.array([rect_footprint(80.0, 14.0) for _ in range(2)])  # a pair: size 2
    fps = np.concatenate([fps, extra])
    res = cluster_frames(fps, min_overlap=0.5)
    again = cluster_frames(fps, min_overlap=0.5)
    np.testing.assert_array_equal(res.labels, again.labels)
    sizes = [len(g) for g in res.groups]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 2
    # equal-size groups are ordered by mean RA, then Dec
    for k, g in enumerate(res.groups):
        assert all(res.labels[i] == k for i in g)
    # permuting the input permutes the labels and nothing else
    perm = rng.permutation(len(fps))
    res_p = cluster_frames(fps[perm], min_overlap=0.5)
    np.testing.assert_array_equal(res_p.labels, res.labels[perm])


def test_to_dict_roundtrip_types() -> None:
    res = cluster_frames(_strip(3), names=["a", "b", "c"])
    d = res.to_dict()
    assert isinstance(res, Clustering)
    assert d == {
        "n_groups": 1,
        "labels": [0, 0, 0],
        "groups": [[0, 1, 2]],
        "isolated": [],
        "names": ["a", "b", "c"],
        "n_links": 3,
    }


def test_empty_and_single() -> None:
    assert cluster_frames(np.empty((0, 4, 2))).groups == []
    res = cluster_frames(_strip(1))
    assert res.groups == [[0]] and res.isolated == []


def test_many_frames_fast() -> None:
    """A few thousand dithered subs: the near-pair search stays well inside the budget."""
    rng = np.random.default_rng(3)
    fps, panel = panel_survey(rng, 210.0, 54.0, subs_per_night=150)
    res = cluster_frames(fps, min_overlap=0.5, max_frames=200)
    assert len(fps) == 2700
    assert res.n_groups == 18  # 9 panels of 300 subs, each halved
    for g in res.groups:
        assert len(set(panel[g].tolist())) == 1


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_overlap": 1.5}, "min_overlap"),
        ({"max_frames": 0}, "max_frames"),
        ({"max_bytes": 10.0}, "frame_bytes"),
        ({"max_bytes": -1.0, "frame_bytes": 1.0}, "max_bytes"),
        ({"mounts": ["EQ", "GEM"]}, "GEM"),
        ({"mounts": ["EQ"]}, "mount modes"),
        ({"names": ["a"]}, "names"),
        ({"centers": np.zeros((3, 2))}, "centers"),
        ({"fov_deg": 0.0}, "fov_deg"),
        ({"center_fraction": -1.0}, "center_fraction"),
    ],
)
def test_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cluster_frames(_strip(2), **kwargs)


def test_validation_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, 4, 2\); got \(2, 3, 2\)"):
        cluster_frames(np.zeros((2, 3, 2)))
    bad = _strip(2)
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite corners \(frames \[1\]\)"):
        cluster_frames(bad)
    with pytest.raises(ValueError, match="fov_deg"):
        cluster_frames(None, centers=np.zeros((2, 2)))
