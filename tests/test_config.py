"""Tests of skymosaic.config: validation, TOML < overrides, round trip, digest, CLI errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from skymosaic.cli import main
from skymosaic.config import Config, ConfigError, config_digest, dump_toml, load_config


def _toml(tmp_path, text, name="cfg.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_validate():
    config = load_config()
    assert config == Config()
    assert config.reproject.kernel == "bilinear"
    assert config.reproject.edge == "half"
    assert config.coadd.weighting == "noise"
    assert config.input.valid_min == pytest.approx(1e-6)
    assert config.output.preview is True and config.output.name == "mosaic"
    assert config.run.memory_budget_mb >= 64
    assert config.memory_budget_bytes == int(config.run.memory_budget_mb * 2**20)


def test_file_then_overrides(tmp_path):
    path = _toml(tmp_path, """
[reproject]
kernel = "lanczos3"
grid_step_px = 32

[run]
threads = 3
log_level = "debug"
""")
    config = load_config(path, {"reproject.kernel": "nearest", "output.pixel_scale_arcsec": None,
                                "coadd.weighting": "exposure"})
    assert config.reproject.kernel == "nearest"  # the override wins over the file
    assert config.reproject.grid_step_px == 32  # the file wins over the default
    assert config.run.threads == 3
    assert config.run.log_level == "DEBUG"
    assert config.output.pixel_scale_arcsec is None  # a None override is "flag not given"
    assert config.coadd.weighting == "exposure"


def test_unknown_key_names_key_value_and_allowed_keys(tmp_path):
    path = _toml(tmp_path, '[reproject]\nkernal = "nearest"\n')
    with pytest.raises(ConfigError, match=r"cfg\.toml") as info:
        load_config(path)
    message = str(info.value)
    assert "unknown key 'reproject.kernal'" in message
    assert "'nearest'" in message
    assert "kernel" in message.split("kernal", 1)[1]  # the allowed keys are listed


def test_unknown_section(tmp_path):
    expected = r"unknown key 'reprojection'.*allowed sections: .*reproject"
    with pytest.raises(ConfigError, match=expected):
        load_config(_toml(tmp_path, "[reprojection]\nkernel = 'nearest'\n"))


def test_bad_enum_names_key_value_and_allowed():
    with pytest.raises(ConfigError) as info:
        load_config(None, {"reproject.kernel": "bogus"})
    message = str(info.value)
    assert "'reproject.kernel' = 'bogus'" in message
    for allowed in ("nearest", "bilinear", "bicubic", "lanczos3"):
        assert allowed in message
    assert "command line" in message


def test_bad_edge_rule_names_key_value_and_allowed():
    with pytest.raises(ConfigError) as info:
        load_config(None, {"reproject.edge": "outer"})
    message = str(info.value)
    assert "'reproject.edge' = 'outer'" in message
    assert "'half'" in message and "'strict'" in message
    assert load_config(None, {"reproject.edge": "strict"}).reproject.edge == "strict"


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("reproject.map_tolerance_px", 2.0, "less than or equal to 0.5"),
        ("reproject.map_tolerance_px", 0.0, "greater than 0"),
        ("reproject.grid_step_px", 2, "greater than or equal to 4"),
        ("run.threads", -1, "greater than or equal to 0"),
        ("run.memory_budget_mb", 10, "greater than or equal to 64"),
        ("output.preview_max_size", 10**6, "less than or equal to 65536"),
        ("output.pixel_scale_arcsec", -1.0, "greater than 0"),
    ],
)
def test_out_of_range_names_key_value_and_limit(key, value, allowed):
    with pytest.raises(ConfigError) as info:
        load_config(None, {key: value})
    message = str(info.value)
    assert f"'{key}' = {value!r}" in message
    assert allowed in message


def test_wrong_type_in_file(tmp_path):
    path = _toml(tmp_path, "[run]\nthreads = 'many'\n")
    with pytest.raises(ConfigError, match=r"(?s)cfg\.toml.*'run\.threads' = 'many'.*integer"):
        load_config(path)


def test_bad_output_name():
    with pytest.raises(ConfigError, match=r"'output\.name' = 'a/b'.*pattern"):
        load_config(None, {"output.name": "a/b"})


def test_override_into_non_section():
    with pytest.raises(ConfigError, match=r"'reproject\.kernel\.x'.*'kernel' is not a section"):
        load_config(None, {"reproject.kernel": "nearest", "reproject.kernel.x": 1})


def test_missing_file_named(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist"):
        load_config(missing)


def test_invalid_toml_named(tmp_path):
    path = _toml(tmp_path, "[reproject\nkernel = \n", name="broken.toml")
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML"):
        load_config(path)


def test_errors_are_value_errors_with_cause():
    with pytest.raises(ValueError, match="bogus") as info:
        load_config(None, {"coadd.weighting": "bogus"})
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "input.recursive": False, "input.wcs_dirs": ["/data/solved", "rel/dir"],
            "input.bayer_pattern": "GRBG", "input.valid_min": -math.inf,
            "input.verify_pixels": False,
            "reproject.kernel": "lanczos3", "reproject.map_tolerance_px": 0.125,
            "reproject.grid_step_px": 16,
            "output.pixel_scale_arcsec": 1.23456789, "output.rotation": "auto",
            "output.projection": "ZEA", "output.wcs_header": "grid/header.hdr",
            "output.preview": False, "output.preview_max_size": 512, "output.name": "m31_v2.final",
            "coadd.weighting": "uniform",
            "run.memory_budget_mb": 777.5, "run.threads": 5, "run.log_level": "warning",
        },
    ],
)
def test_dump_toml_round_trip(tmp_path, overrides):
    config = load_config(None, overrides)
    path = _toml(tmp_path, dump_toml(config))
    back = load_config(path)
    assert back == config
    assert dump_toml(back) == dump_toml(config)


def test_config_digest():
    a = load_config(None, {"run.memory_budget_mb": 1000})
    same = load_config(None, {"run.memory_budget_mb": 1000})
    assert config_digest(a) == config_digest(same)
    assert len(config_digest(a)) == 16
    changed = load_config(None, {"run.memory_budget_mb": 1000, "reproject.kernel": "bicubic"})
    assert config_digest(changed) != config_digest(a)
    nudged = load_config(None, {"run.memory_budget_mb": 1000,
                                "reproject.map_tolerance_px": 0.0100001})
    assert config_digest(nudged) != config_digest(a)
    # the console log level is not part of what was computed
    chatty = load_config(None, {"run.memory_budget_mb": 1000, "run.log_level": "DEBUG"})
    assert config_digest(chatty) == config_digest(a)
    # a digest of selected sections ignores the others
    sections = ("reproject",)
    assert config_digest(changed, sections=sections) != config_digest(a, sections=sections)
    other = load_config(None, {"run.memory_budget_mb": 1000, "coadd.weighting": "uniform"})
    assert config_digest(other, sections=sections) == config_digest(a, sections=sections)


# -- through the command line --------------------------------------------------------------


def test_cli_bad_kernel_fails_before_any_work(tmp_frames, tmp_path, capsys):
    folder = tmp_frames()[0].parent
    out = tmp_path / "out"
    assert main(["run", str(folder), "-o", str(out), "--kernel", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err
    for allowed in ("nearest", "bilinear", "bicubic", "lanczos3"):
        assert allowed in err
    assert not out.exists()


def test_cli_bad_config_file(tmp_frames, tmp_path, capsys):
    folder = tmp_frames()[0].parent
    cfg = _toml(tmp_path, "[run]\nthreads = -4\n")
    out = tmp_path / "out"
    assert main(["run", str(folder), "-o", str(out), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "run.threads" in err and "-4" in err
    assert not out.exists()
    assert main(["run", str(folder), "-o", str(out), "--config", str(tmp_path / "no.toml")]) == 2
    assert "no.toml" in capsys.readouterr().err


def test_cli_config_file_and_flag(tmp_frames, tmp_path):
    folder = tmp_frames()[0].parent
    cfg = _toml(tmp_path, "[reproject]\nkernel = 'bicubic'\n[output]\nname = 'sky'\n")
    out = tmp_path / "out"
    code = main(["run", str(folder), "-o", str(out), "--config", str(cfg), "--kernel", "nearest",
                 "--threads", "1", "--no-preview"])
    assert code == 0
    used = load_config(out / "config.toml")
    assert used.reproject.kernel == "nearest"
    assert used.output.name == "sky" and used.output.preview is False and used.run.threads == 1
    assert (out / "sky.fits").is_file()
    assert not (out / "sky_preview.png").exists()
    assert Path(out / "run.json").is_file()
