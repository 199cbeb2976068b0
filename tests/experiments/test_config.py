"""Study configurations (omnifuse.experiments.config): list options from comma-separated strings, the checks
of a configuration (folds, repeats, jobs, the imputation study's fold), unknown keys named, a TOML file under
keyword overrides, and the training options every run gets."""

import pytest

from omnifuse.experiments.config import (
    AblationConfig,
    CompareConfig,
    ImputationConfig,
    StudyConfig,
    SweepConfig,
    UnimodalConfig,
    study_config,
)


def test_list_options_accept_comma_separated_strings():
    cfg = CompareConfig(
        methods=["omnifuse,concat", " sum ", "a,,"], modalities=["img, rep"], combinations=["full+single,img+rep"]
    )
    assert cfg.methods == ["omnifuse", "concat", "sum", "a"]
    assert cfg.modalities == ["img", "rep"] and cfg.combinations == ["full+single", "img+rep"]
    assert AblationConfig(rows=["a,b", "f"]).rows == ["a", "b", "f"]
    assert UnimodalConfig(fused=["concat,omnifuse"]).fused == ["concat", "omnifuse"]
    # a single string for a list option (a flag given once, a keyword): that one value, then split
    assert study_config(CompareConfig, None, methods="omnifuse,dwfuse_only").methods == ["omnifuse", "dwfuse_only"]
    assert study_config(CompareConfig, None, combinations="all").combinations == ["all"]
    assert study_config(CompareConfig, None, methods=None).methods is None  # None: not given


@pytest.mark.parametrize(
    "cls", [StudyConfig, CompareConfig, UnimodalConfig, AblationConfig, SweepConfig, ImputationConfig]
)
def test_folds_below_two_are_refused(cls):
    with pytest.raises(ValueError, match="a cross-validated study needs folds >= 2, got 1"):
        cls(folds=1)


def test_repeats_and_jobs_are_checked():
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        StudyConfig(repeats=0)
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        StudyConfig(n_jobs=0)


def test_imputation_fold_must_be_one_of_the_folds():
    assert ImputationConfig(folds=3, fold=2).fold == 2
    for fold in (3, -1):
        with pytest.raises(ValueError, match=rf"fold must be in 0..2, got {fold}"):
            ImputationConfig(folds=3, fold=fold)
    with pytest.raises(ValueError, match=r"fold must be in 0..1, got 2"):
        study_config(ImputationConfig, {"folds": 2}, fold=2)


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown CompareConfig option\(s\): learning_rate; known: "):
        study_config(CompareConfig, {"learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"unknown SweepConfig option\(s\): fused"):
        study_config(SweepConfig, None, fused=["concat"])  # another study's option
    p = tmp_path / "study.toml"
    p.write_text('task = "mortality"\nfolds = 4\nmethods = ["concat"]\nbogus = 1\n')
    with pytest.raises(ValueError, match=r"unknown CompareConfig option\(s\): bogus"):
        study_config(CompareConfig, p)


def test_file_then_keyword_overrides(tmp_path):
    p = tmp_path / "study.toml"
    p.write_text(
        'task = "pheno"\nfolds = 4\nmethods = ["concat", "sum"]\n[options]\nlr = 0.01\n'
        "[method_overrides.omnifuse]\nbeta = 0.25\n"
    )
    cfg = study_config(CompareConfig, p, folds=3, seed=None)
    assert (cfg.task, cfg.folds, cfg.seed, cfg.methods) == ("pheno", 3, 0, ["concat", "sum"])
    assert cfg.options == {"lr": 0.01} and cfg.method_overrides == {"omnifuse": {"beta": 0.25}}
    assert cfg.to_json()["folds"] == 3


def test_train_options_merge_epochs_and_device():
    options = {"lr": 0.1, "epochs": 9, "batch_size": 16}
    cfg = SweepConfig(options=options, epochs=3, device="cpu")
    assert cfg.train_options() == {"lr": 0.1, "epochs": 3, "batch_size": 16, "device": "cpu"}
    assert options == {"lr": 0.1, "epochs": 9, "batch_size": 16}  # the configuration's own dict is untouched
    assert SweepConfig(options=options).train_options() == options  # epochs and device not given: kept
    assert StudyConfig().train_options() == {}
