"""The backend layer: selection (use_gpu), transfers, chunk sizing, fault handling.

No test here needs CuPy: CuPy is hidden (``sys.modules["cupy"] = None``) where its absence
matters, and device runs use array-api-strict on ``device1``. Fault injection replaces a
device kernel with one that raises a simulated out-of-memory or driver error.
"""

from __future__ import annotations

import json
import logging
import pickle
import sys

import array_api_strict as xps
import numpy as np
import pytest

from skymosaic.assemble import ArraySource, CoaddOptions, coadd
from skymosaic.backend import (
    Backend,
    GPUUnavailableError,
    _kernels,
    cpu_backend,
    gaussian_filter,
    is_out_of_memory,
    nanmedian,
    nanpercentile,
    select_backend,
    to_host,
)
from skymosaic.cli import main
from skymosaic.config import ConfigError, config_digest, load_config
from skymosaic.reproject import optimal_grid
from skymosaic.stack import StackSettings, _reject_xp, stack_cube
from skymosaic.synth import make_survey


@pytest.fixture
def no_cupy(monkeypatch):
    """Make ``import cupy`` fail, whatever is installed."""
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.delenv("SKYMOSAIC_USE_GPU", raising=False)


def _strict(**kw) -> Backend:
    return Backend(xps, device=xps.Device("device1"), name="strict", requested="on", **kw)


# ------------------------------------------------------------------ selection
def test_select_off_and_auto_without_cupy_give_numpy(no_cupy):
    off = select_backend("off")
    assert off.name == "numpy" and not off.on_device and off.report()["requested"] == "off"
    auto = select_backend("auto")
    assert auto.name == "numpy" and auto.report()["requested"] == "auto"


def test_select_on_without_cupy_is_a_clear_config_error(no_cupy):
    with pytest.raises(
        GPUUnavailableError, match=r"use_gpu = 'on' but CuPy is not installed.*skymosaic\[gpu\]"
    ):
        select_backend("on")
    assert issubclass(GPUUnavailableError, ConfigError)


def test_select_rejects_unknown_value_and_env_overrides_auto(no_cupy, monkeypatch):
    with pytest.raises(ValueError, match=r"use_gpu must be one of .*got 'yes'"):
        select_backend("yes")
    monkeypatch.setenv("SKYMOSAIC_USE_GPU", "on")
    with pytest.raises(GPUUnavailableError, match="CuPy is not installed"):
        select_backend("auto")
    assert select_backend("off").name == "numpy"  # the variable only overrides "auto"


def test_config_use_gpu_field():
    assert load_config(None, {}).run.use_gpu == "auto"
    assert load_config(None, {"run.use_gpu": "off"}).run.use_gpu == "off"
    with pytest.raises(ConfigError, match="use_gpu"):
        load_config(None, {"run.use_gpu": "maybe"})
    # the GPU is a pure speed-up: it does not change the provenance digest
    assert config_digest(load_config(None, {"run.use_gpu": "off"})) == config_digest(
        load_config(None, {})
    )


def test_cli_gpu_on_without_cupy_exits_2(no_cupy, tmp_frames, tmp_path, capsys):
    paths = tmp_frames()
    code = main(
        ["run", str(paths[0].parent), "-o", str(tmp_path / "out"), "--gpu", "on", "--threads", "1"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "CuPy is not installed" in err and "skymosaic[gpu]" in err
    assert (
        main(["run", str(paths[0].parent), "-o", str(tmp_path / "o2"), "--gpu", "sometimes"]) == 2
    )


def test_cli_gpu_off_records_backend_in_run_json(no_cupy, tmp_frames, tmp_path):
    paths = tmp_frames()
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                str(paths[0].parent),
                "-o",
                str(out),
                "--gpu",
                "off",
                "--threads",
                "1",
                "--no-preview",
            ]
        )
        == 0
    )
    report = json.loads((out / "run.json").read_text())["backend"]
    assert (
        report["backend"] == "numpy" and report["requested"] == "off" and report["disabled"] is None
    )
    assert report["steps"]["reproject"]["gpu"] == 0 and report["steps"]["reproject"]["cpu"] > 0


# ------------------------------------------------------------------ transfers and sizing
def test_transfers_round_trip_and_stay_on_device():
    be = _strict()
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = be.to_device(a)
    assert d.device == xps.Device("device1")
    with pytest.raises(RuntimeError):  # the stand-in refuses hidden host conversions
        np.asarray(d)
    np.testing.assert_array_equal(to_host(d), a)
    assert to_host(a) is a


def test_chunk_rows_follows_free_memory(monkeypatch):
    be = _strict(vram_fraction=0.5)
    assert be.chunk_rows(100, 1000) == 100  # no memory information: the whole height
    monkeypatch.setattr(be, "free_bytes", lambda: 20_000)
    assert be.chunk_rows(100, 1000) == 10  # half of 20 kB at 1 kB per row
    assert be.chunk_rows(100, 10**9) == 1
    with pytest.raises(ValueError, match="vram_fraction"):
        Backend(xps, vram_fraction=0.0)


def test_backend_pickles_as_a_recipe():
    be = _strict()
    be.run("x", lambda rows: 1, lambda: 0)
    clone = pickle.loads(pickle.dumps(be))
    assert clone.device == be.device and clone.on_device and clone.report()["steps"] == {}
    assert pickle.loads(pickle.dumps(cpu_backend())).name == "numpy"


# ------------------------------------------------------------------ faults
def test_out_of_memory_halves_the_chunk_and_retries():
    be = _strict()
    seen = []

    def gpu(rows):
        seen.append(rows)
        if rows > 8:
            raise MemoryError("Out of memory allocating 1,000,000 bytes")
        return "gpu"

    assert be.run("step", gpu, lambda: "cpu", rows=64) == "gpu"
    assert seen == [64, 32, 16, 8]
    assert be.report()["steps"]["step"] == {"gpu": 1, "cpu": 0, "oom_retries": 3}
    assert be.on_device


def test_retries_exhausted_fall_back_with_one_warning(caplog):
    be = _strict(max_retries=2)

    def gpu(rows):
        raise MemoryError("out of memory")

    with caplog.at_level(logging.WARNING, logger="skymosaic"):
        assert be.run("coadd", gpu, lambda: "cpu", rows=64) == "cpu"
    assert [r.message for r in caplog.records if r.levelno == logging.WARNING] == [
        "GPU step 'coadd' failed (out of memory after 2 retries); GPU disabled for the rest of "
        "the run, the step is recomputed on the CPU"
    ]
    assert not be.on_device and be.disabled_reason.startswith("coadd:")


def test_driver_error_disables_gpu_once(caplog):
    be = _strict()
    calls = []

    def gpu(rows):
        calls.append(rows)
        raise RuntimeError("CUDA_ERROR_LAUNCH_FAILED: unspecified launch failure")

    with caplog.at_level(logging.WARNING, logger="skymosaic"):
        assert be.run("stack", gpu, lambda: "cpu") == "cpu"
        assert be.run("stack", gpu, lambda: "cpu") == "cpu"  # GPU stays off: no second try
        assert be.run("coverage_renorm", gpu, lambda: "cpu") == "cpu"
    assert calls == [1]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1
        and "'stack'" in warnings[0].message
        and "LAUNCH_FAILED" in warnings[0].message
    )
    rep = be.report()
    assert rep["steps"]["stack"] == {
        "gpu": 0,
        "cpu": 2,
        "fallback": "RuntimeError: CUDA_ERROR_LAUNCH_FAILED: unspecified launch failure",
    }
    assert rep["steps"]["coverage_renorm"] == {"gpu": 0, "cpu": 1}


def test_programming_errors_are_not_swallowed():
    be = _strict()
    with pytest.raises(TypeError):
        be.run("step", lambda rows: (_ for _ in ()).throw(TypeError("bug")), lambda: "cpu")
    assert is_out_of_memory(MemoryError()) and is_out_of_memory(
        RuntimeError("CUFFT_ALLOC_FAILED out of memory")
    )
    assert not is_out_of_memory(RuntimeError("launch failed"))


@pytest.fixture(scope="module")
def cube():
    rng = np.random.default_rng(4)
    v = rng.normal(50, 3, (9, 3, 16, 12)).astype(np.float32)
    v[rng.random(v.shape) < 0.05] += 40.0
    return v


def test_stack_oom_in_a_kernel_retries_with_smaller_chunks(cube, monkeypatch):
    settings = StackSettings(rejection="kappa_sigma", normalization="additive")
    cpu = stack_cube(cube, settings=settings)
    real = _reject_xp.clip  # the array-API kernel of kappa-sigma clipping

    def small_only(values, **kw):
        if values.shape[2] > 4:  # a chunk of more than 4 rows does not "fit"
            raise MemoryError("Out of memory allocating 2,359,296 bytes")
        return real(values, **kw)

    monkeypatch.setattr(_reject_xp, "clip", small_only)
    be = _strict()
    gpu = stack_cube(cube, settings=settings, backend=be)
    assert be.report()["steps"]["stack"] == {
        "gpu": 1,
        "cpu": 0,
        "oom_retries": 2,
    }  # 16 -> 8 -> 4 rows
    np.testing.assert_allclose(gpu.data, cpu.data, rtol=1e-6)
    np.testing.assert_array_equal(gpu.rejected_per_channel, cpu.rejected_per_channel)


def test_stack_driver_error_gives_the_cpu_result(cube, monkeypatch, caplog):
    settings = StackSettings(rejection="winsorized", normalization="additive")
    cpu = stack_cube(cube, settings=settings)

    def broken(values, **kw):
        raise RuntimeError("cudaErrorIllegalAddress: an illegal memory access was encountered")

    monkeypatch.setattr(_reject_xp, "clip", broken)
    be = _strict()
    with caplog.at_level(logging.WARNING, logger="skymosaic"):
        gpu = stack_cube(cube, settings=settings, backend=be)
    assert sum("GPU step 'stack' failed" in r.message for r in caplog.records) == 1
    for name in ("data", "weight", "n_frames_map", "rejected_per_channel"):
        np.testing.assert_array_equal(getattr(gpu, name), getattr(cpu, name))


@pytest.fixture(scope="module")
def small_survey():
    sv = make_survey(n_x=2, n_y=1, frame_shape=(48, 64), channels=3, seed=2)
    feet = [f.wcs.calc_footprint(axes=(64, 48)) for f in sv.frames]
    grid = optimal_grid(feet, pixel_scale_arcsec=sv.pixel_scale_arcsec)
    return [ArraySource.from_arrays(f.name, f.data, f.wcs) for f in sv.frames], grid


def test_coadd_driver_error_warns_once_and_matches_cpu(small_survey, monkeypatch, caplog):
    sources, grid = small_survey
    cpu = coadd(sources, grid, options=CoaddOptions(threads=1))

    def broken(*args, **kw):
        raise RuntimeError("CUDA_ERROR_LAUNCH_FAILED")

    monkeypatch.setattr(_kernels, "remap", broken)
    be = _strict()
    with caplog.at_level(logging.WARNING, logger="skymosaic"):
        gpu = coadd(sources, grid, options=CoaddOptions(threads=2, backend=be))
    assert sum("GPU step 'reproject' failed" in r.message for r in caplog.records) == 1
    np.testing.assert_array_equal(gpu.data, cpu.data)
    np.testing.assert_array_equal(gpu.weight, cpu.weight)
    assert be.report()["steps"]["reproject"]["gpu"] == 0


def test_coadd_oom_retries_then_matches_cpu(small_survey, monkeypatch):
    sources, grid = small_survey
    cpu = coadd(sources, grid, options=CoaddOptions(threads=1))
    real = _kernels.remap

    def small_only(planes, xmap, ymap, kernel, **kw):
        if xmap.shape[0] > 16:
            raise MemoryError("Out of memory")
        return real(planes, xmap, ymap, kernel, **kw)

    monkeypatch.setattr(_kernels, "remap", small_only)
    be = _strict()
    gpu = coadd(sources, grid, options=CoaddOptions(threads=1, backend=be))
    steps = be.report()["steps"]["reproject"]
    assert steps["oom_retries"] > 0 and steps["cpu"] == 0 and steps["gpu"] > 0
    np.testing.assert_allclose(gpu.data, cpu.data, rtol=1e-5, atol=1e-3, equal_nan=True)
    np.testing.assert_array_equal(gpu.coverage, cpu.coverage)


# ------------------------------------------------------------------ one kernel per primitive
@pytest.mark.parametrize("sigma", [0.8, 4.0])
def test_gaussian_filter_blurs_each_channel_on_its_own(sigma):
    """A (C, H, W) blur is the per-channel blurs, on the host and in the array-API kernel
    (the code a device runs), and a channel's light never reaches another channel."""
    rng = np.random.default_rng(3)
    cube = rng.random((3, 41, 46))
    cube[1] = 0.0
    cube[1, 20, 23] = 1.0  # a point in channel 1 only (its blur stays inside)
    cube[2] = 5.0  # constant: stays constant
    for blur in (gaussian_filter, _kernels.gaussian_filter):
        out = blur(cube, sigma)
        assert out.shape == cube.shape
        for c in range(3):
            want = gaussian_filter(cube[c], sigma)
            np.testing.assert_allclose(out[c], want, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(out[1].sum(), 1.0, rtol=1e-12)  # flux stays in channel 1
        np.testing.assert_allclose(out[2], 5.0, rtol=1e-12)
    solo = cube.copy()
    solo[0] = 0.0
    np.testing.assert_array_equal(gaussian_filter(solo, sigma)[1], gaussian_filter(cube, sigma)[1])
    dev = xps.asarray(cube, device=xps.Device("device1"))
    np.testing.assert_allclose(
        np.asarray(to_host(gaussian_filter(dev, sigma))), gaussian_filter(cube, sigma), rtol=1e-10
    )


def test_gaussian_filter_refuses_other_shapes():
    for blur in (gaussian_filter, _kernels.gaussian_filter):
        with pytest.raises(ValueError, match=r"an \(H, W\) or \(C, H, W\) array, got shape"):
            blur(np.zeros((2, 3, 4, 5)), 1.0)
        with pytest.raises(ValueError, match="sigma must be > 0"):
            blur(np.zeros((4, 5)), 0.0)


def test_nan_statistics_match_numpy():
    """`nanmedian` / `nanpercentile` have no host fast path: the array-API kernels on NumPy
    equal NumPy's own (NaN where no sample is valid)."""
    rng = np.random.default_rng(8)
    v = rng.normal(0, 1, (9, 4, 5))
    v[rng.random(v.shape) < 0.2] = np.nan
    v[:, 0, 0] = np.nan
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        np.testing.assert_array_equal(nanmedian(v), np.nanmedian(v, axis=0))
    for q in (0.0, 12.5, 50.0, 100.0):
        with pytest.warns(RuntimeWarning):
            want = np.nanpercentile(v, q, axis=0)
        np.testing.assert_allclose(nanpercentile(v, q), want, rtol=1e-12, atol=1e-15)
