"""The config tree: defaults, overrides, fingerprints and the errors users see."""
from pathlib import Path

import pytest
import yaml

from git_ray.config import (ConfigError, TrialConfig, deep_merge, load_trial_config, parse_override,
                            set_dotted, trial_config)
from git_ray.registry import ARCHS, CLASS_WEIGHTS, LOSSES, NUISANCES, PROFILES, SAMPLERS, SOURCES

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_are_valid_and_frozen():
    cfg = TrialConfig()
    with pytest.raises(Exception):
        cfg.seed = 3  # frozen: a config is a value


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_ready_config_is_valid(path):
    cfg = load_trial_config(path)
    assert cfg.dataset.source in SOURCES


def test_flat_names_use_underscores():
    flat = TrialConfig().flat()
    for col in ("dataset_source", "dataset_nuisance", "dataset_imbalance_ratio", "dataset_instance",
                "balance_loss", "balance_sampler", "balance_reweight", "augment_git", "augment_gen_frac",
                "augment_oracle", "augment_nuisance_strength", "model_arch", "seed"):
        assert col in flat


def test_fingerprint_tracks_what_changes_results():
    base = TrialConfig()
    assert base.fingerprint() == TrialConfig().fingerprint()
    assert base.fingerprint() != trial_config({"seed": 1}).fingerprint()
    assert base.fingerprint() != trial_config({"balance": {"loss": "ldam"}}).fingerprint()
    # where files live and which device runs it are not identity
    assert base.fingerprint() == trial_config({"dataset": {"root": "/x"}, "train": {"device": "cpu"},
                                               "generator": {"cache": "s3://b/c"}}).fingerprint()
    # nor is evaluation's forward batch (it moves no draw); the draw chunk is
    assert base.fingerprint() == trial_config({"eval": {"forward_batch": 64}}).fingerprint()
    assert base.fingerprint() != trial_config({"eval": {"batch_size": 64}}).fingerprint()


def test_forward_batch_defaults_by_device():
    from git_ray.config import CPU_FORWARD_BATCH

    assert TrialConfig().eval.forward_batch_for("cpu") == CPU_FORWARD_BATCH
    assert TrialConfig().eval.forward_batch_for("cuda:0") == TrialConfig().eval.batch_size
    assert trial_config({"eval": {"forward_batch": 32}}).eval.forward_batch_for("cuda:0") == 32


def test_overrides_and_merge():
    d = set_dotted({"balance": {"loss": "ce", "sampler": "none"}}, "balance.loss", "ldam")
    assert d == {"balance": {"loss": "ldam", "sampler": "none"}}
    merged = deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
    assert merged == {"a": {"b": 1, "c": 3}}
    assert parse_override("train.lr=0.01") == ("train.lr", 0.01)
    assert parse_override("augment.git=true") == ("augment.git", True)
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("train.lr")


def test_head_follows_loss():
    assert trial_config({"balance": {"loss": "ldam"}}).head == "cosine"
    assert trial_config({"balance": {"loss": "ce"}}).head == "linear"
    assert trial_config({"balance": {"loss": "ce"}, "model": {"head": "cosine"}}).head == "cosine"


@pytest.mark.parametrize("section,key,registry", [
    ("dataset", "source", SOURCES), ("dataset", "nuisance", NUISANCES), ("dataset", "profile", PROFILES),
    ("model", "arch", ARCHS), ("balance", "loss", LOSSES), ("balance", "sampler", SAMPLERS),
    ("balance", "reweight", CLASS_WEIGHTS)])
def test_unknown_registry_names_list_the_choices(section, key, registry):
    with pytest.raises(ConfigError) as err:
        trial_config({section: {key: "nonsense"}})
    msg = str(err.value)
    assert f"{section}.{key}" in msg and "'nonsense'" in msg
    for name in registry.names():
        assert name in msg


@pytest.mark.parametrize("data,needle", [
    ({"train": {"epochz": 3}}, "train.epochz: unknown key"),
    ({"train": {"epochs": "many"}}, "train.epochs"),
    ({"augment": {"gen_frac": 1.5}}, "augment.gen_frac"),
    ({"train": {"s1": 30, "s2": 10}}, "s1 (30) must not come after s2 (10)"),
    ({"colour": "red"}, "colour: unknown key"),
])
def test_bad_values_name_key_and_value(data, needle):
    with pytest.raises(ConfigError, match=None) as err:
        trial_config(data)
    assert needle in str(err.value)


def test_load_from_yaml_with_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"balance": {"loss": "focal"}, "seed": 4}))
    cfg = load_trial_config(p, ["balance.sampler=drs", "seed=5"])
    assert (cfg.balance.loss, cfg.balance.sampler, cfg.seed) == ("focal", "drs", 5)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_trial_config(tmp_path / "absent.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("dataset: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_trial_config(p)
    p.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_trial_config(p)


def test_ldam_predictions_use_the_loss_scale():
    assert trial_config({"balance": {"loss": "ldam", "ldam_scale": 20}}).logit_scale == 20
    assert trial_config({"balance": {"loss": "ce"}}).logit_scale == 1.0
