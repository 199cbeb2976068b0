"""Stage-two run configuration (omnifuse.fuse.config): defaults < TOML file < flags, ``method_params`` merged
key by key, the file's ``[grid]`` table left to ``grid``, unknown keys named, and the checks of a config."""

import pytest

from omnifuse.fuse.config import TrainConfig, resolve_config


def test_config_file_and_flags(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('task = "mortality"\nepochs = 7\n[method_params]\nbeta = 0.25\nd = 16\n[grid]\nbeta = [0.5]\n')
    cfg = resolve_config(p, epochs=2, method_params={"alpha": 0.3})
    assert cfg.epochs == 2 and cfg.method_params == {"beta": 0.25, "d": 16, "alpha": 0.3}
    with pytest.raises(ValueError, match="unknown TrainConfig option"):
        resolve_config({"epochs": 1, "learning_rate": 3})


def test_defaults_none_overrides_and_json():
    cfg = resolve_config(None, task="mortality", lr=None, batch_size=64)
    assert cfg.lr == TrainConfig().lr and cfg.batch_size == 64  # a None override is a flag not given
    assert resolve_config(cfg, epochs=3).epochs == 3 and cfg.epochs == TrainConfig().epochs
    saved = cfg.to_json()
    assert saved["task"] == "mortality" and saved["batch_size"] == 64
    assert resolve_config(saved) == cfg  # what a run saves resolves to the same configuration


def test_checks_of_a_config():
    with pytest.raises(ValueError, match="folds must be >= 1, got 0"):
        resolve_config(None, folds=0)
    with pytest.raises(ValueError, match=r"missing_rate must be in \[0, 1\], got 1.5"):
        resolve_config(None, missing_rate=1.5)
