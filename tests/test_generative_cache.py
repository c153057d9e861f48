"""The generator cache: fingerprints, train-once-then-load, the lock, resuming an interrupted run."""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time

import pytest
import torch

from git_ray.config import GeneratorConfig
from git_ray.generative import cache as gcache
from git_ray.generative import generator_fingerprint, generator_paths, get_generator, load_generator
from git_ray.generative.train import load_checkpoint, train_munit
from test_generative_train import TINY, params, tiny_data

CFG = GeneratorConfig(steps=3, checkpoint_every=2, **TINY)


@pytest.fixture
def train_calls(monkeypatch) -> list[str]:
    """Count (and slow down a little, so concurrent requests overlap) every training run."""
    calls: list[str] = []

    def counting(data, gcfg, **kw):
        calls.append(threading.current_thread().name)
        time.sleep(0.3)
        return train_munit(data, gcfg, **kw)

    monkeypatch.setattr(gcache, "train_munit", counting)
    return calls


def quiet(msg: str) -> None:
    pass


def test_fingerprint_is_stable_and_sensitive() -> None:
    fp = generator_fingerprint("data1", CFG)
    assert fp == generator_fingerprint("data1", GeneratorConfig(**CFG.model_dump()))
    assert fp == generator_fingerprint("data1", CFG.model_copy(update={"cache": "s3://elsewhere"}))
    others = {generator_fingerprint("data2", CFG),
              generator_fingerprint("data1", CFG.model_copy(update={"seed": 1})),
              generator_fingerprint("data1", CFG.model_copy(update={"steps": 4})),
              generator_fingerprint("data1", CFG.model_copy(update={"dim": 8}))}
    assert fp not in others and len(others) == 4


def test_discriminator_fields_enter_the_fingerprint_only_when_set() -> None:
    fp = generator_fingerprint("data1", CFG)
    # a generator stored before dis_layers / dis_dim existed recorded a config without them
    old = CFG.model_dump(exclude={"cache", "dis_layers", "dis_dim"})
    assert gcache._fingerprint("data1", old, gcache.CODE_VERSION) == fp
    blob = {"format": gcache.GENERATOR_FORMAT, "config": old, "data_fingerprint": "data1",
            "code_version": gcache.CODE_VERSION}
    assert gcache.generator_problem(blob, fp) is None  # still found at its place
    set_ = {generator_fingerprint("data1", CFG.model_copy(update={"dis_layers": 2})),
            generator_fingerprint("data1", CFG.model_copy(update={"dis_layers": 4})),
            generator_fingerprint("data1", CFG.model_copy(update={"dis_dim": 64}))}
    assert fp not in set_ and len(set_) == 3  # 4 written out is not the default left unset


def test_first_request_trains_second_loads(tmp_path, train_calls) -> None:
    data = tiny_data()
    cache = str(tmp_path / "gens")
    logs: list[str] = []
    first = get_generator(data, CFG, cache=cache, device="cpu", log=logs.append)
    assert len(train_calls) == 1
    paths = generator_paths(cache, generator_fingerprint(data.fingerprint, CFG))
    folder = tmp_path / "gens" / paths["fingerprint"]
    assert sorted(p.name for p in folder.iterdir()) == ["generator.pt", "meta.json", "samples.png"]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["steps"] == 3 and meta["config"]["dim"] == TINY["dim"] and meta["seconds"] > 0
    # The quality check rides along: label agreement and the background's coverage, in [0, 1].
    q = meta["quality"]
    assert 0 <= q["label_agreement"] <= 1 and 0 <= q["coverage_distance"] and 0 <= q["coverage_reach"] <= 1
    assert q["passed"] == (q["label_agreement"] >= 0.9 and q["coverage_distance"] <= 0.15)
    assert meta["coverage"]["n_sources"] > 0 and meta["coverage"]["true_high"] > meta["coverage"]["true_low"]
    assert gcache.read_generator_meta(data, CFG, cache=cache) == meta
    assert gcache.read_generator_meta(data, CFG.model_copy(update={"seed": 77}), cache=cache) is None
    assert "label agreement" in gcache.quality_line(q) and "coverage distance" in gcache.quality_line(q)
    assert f"a copier scores {q['coverage_copy_distance']:.3f}" in gcache.quality_line(q)
    assert (folder / "samples.png").read_bytes().startswith(b"\x89PNG")

    second = get_generator(data, CFG, cache=cache, device="cpu", log=logs.append)
    assert len(train_calls) == 1  # loaded, not trained
    assert any("loading" in m for m in logs)
    assert not second.training
    assert all(torch.equal(p, q) for p, q in zip(params(first), params(second)))
    x, z = torch.rand(2, 1, 8, 8) * 2 - 1, torch.randn(2, TINY["style_dim"])
    torch.testing.assert_close(first.translate(x, z), second.translate(x, z))

    get_generator(data, CFG.model_copy(update={"seed": 5}), cache=cache, device="cpu", log=quiet)
    assert len(train_calls) == 2  # another config is another generator


def test_concurrent_requests_train_once(tmp_path, train_calls) -> None:
    data = tiny_data()
    cache = str(tmp_path / "gens")
    results: dict[str, torch.nn.Module] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def request() -> None:
        try:
            barrier.wait()
            results[threading.current_thread().name] = get_generator(data, CFG, cache=cache, device="cpu",
                                                                     log=quiet)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=request, name=f"trial{i}") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(train_calls) == 1 and len(results) == 3
    a, b, c = results.values()
    assert all(torch.equal(p, q) and torch.equal(p, r) for p, q, r in zip(params(a), params(b), params(c)))


def test_lock_factory_is_used(tmp_path, train_calls) -> None:
    taken: list[str] = []

    @contextlib.contextmanager
    def lock(fp: str):
        taken.append(fp)
        yield

    data = tiny_data()
    get_generator(data, CFG, cache=str(tmp_path), device="cpu", lock_factory=lock, log=quiet)
    assert taken == [generator_fingerprint(data.fingerprint, CFG)]
    assert not list(tmp_path.glob("*.lock"))  # the default file lock was not used


class Interrupt(Exception):
    pass


def test_interrupted_training_resumes_from_the_cache_checkpoint(tmp_path, monkeypatch) -> None:
    data = tiny_data()
    cfg = GeneratorConfig(steps=5, checkpoint_every=2, **TINY)
    cache = str(tmp_path / "gens")
    paths = generator_paths(cache, generator_fingerprint(data.fingerprint, cfg))

    def crash_at_3(data, gcfg, **kw):
        def cb(step, losses):
            if step == 3:
                raise Interrupt
        return train_munit(data, gcfg, callback=cb, **kw)

    monkeypatch.setattr(gcache, "train_munit", crash_at_3)
    with pytest.raises(Interrupt):
        get_generator(data, cfg, cache=cache, device="cpu", log=quiet)
    assert load_checkpoint(paths["training_checkpoint"])["step"] == 2
    assert not (tmp_path / "gens" / paths["fingerprint"] / "generator.pt").exists()

    monkeypatch.setattr(gcache, "train_munit", train_munit)
    logs: list[str] = []
    resumed = get_generator(data, cfg, cache=cache, device="cpu", log=logs.append)
    assert any("resuming" in m and "step 2" in m for m in logs)
    straight = train_munit(data, cfg, log=quiet)
    assert all(torch.equal(p, q) for p, q in zip(params(resumed), params(straight)))


def test_without_lock_factory_a_lease_in_the_cache_is_the_lock(tmp_path) -> None:
    # local and remote caches alike: the lock is a lease record beside the entry while held
    logs: list[str] = []
    lock = gcache._lock_for(str(tmp_path), "abc", None, logs.append)
    with lock as lease:
        record = json.loads((tmp_path / "abc.lock").read_text())
        assert record["token"] == lease.token and record["pid"] == os.getpid()
    assert not (tmp_path / "abc.lock").exists() and not logs



# ---------------------------------------------------------------------------------------------
# Damaged or misplaced files are set aside (never deleted) and the generator trained again


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_a_truncated_generator_is_quarantined_and_retrained(tmp_path, train_calls) -> None:
    data = tiny_data()
    cache = str(tmp_path / "gens")
    get_generator(data, CFG, cache=cache, device="cpu", log=quiet)
    paths = generator_paths(cache, generator_fingerprint(data.fingerprint, CFG))
    gen = tmp_path / "gens" / paths["fingerprint"] / "generator.pt"
    _truncate(gen)
    damaged = gen.read_bytes()
    logs: list[str] = []
    again = get_generator(data, CFG, cache=cache, device="cpu", log=logs.append)  # no exception
    assert len(train_calls) == 2
    assert any("warning" in m and "cannot be read" in m and "quarantine" in m for m in logs)
    kept = tmp_path / "gens" / "quarantine" / paths["fingerprint"] / "generator.pt"
    assert kept.read_bytes() == damaged  # moved aside, not deleted
    reloaded = get_generator(data, CFG, cache=cache, device="cpu", log=quiet)
    assert len(train_calls) == 2  # the new file is whole: loaded, not trained
    assert all(torch.equal(p, q) for p, q in zip(params(again), params(reloaded)))
    assert gcache.inspect_entry(cache, paths["fingerprint"]) == []


def test_a_generator_of_another_config_at_this_place_is_quarantined(tmp_path, train_calls) -> None:
    data = tiny_data()
    cache = str(tmp_path / "gens")
    other = CFG.model_copy(update={"seed": 5})
    get_generator(data, other, cache=cache, device="cpu", log=quiet)
    here = generator_paths(cache, generator_fingerprint(data.fingerprint, CFG))
    there = generator_paths(cache, generator_fingerprint(data.fingerprint, other))
    (tmp_path / "gens" / here["fingerprint"]).mkdir()
    wrong = (tmp_path / "gens" / there["fingerprint"] / "generator.pt").read_bytes()
    (tmp_path / "gens" / here["fingerprint"] / "generator.pt").write_bytes(wrong)
    problems = gcache.inspect_entry(cache, here["fingerprint"])
    assert [p for p, _ in problems] == [here["checkpoint"]] and "records fingerprint" in problems[0][1]
    logs: list[str] = []
    get_generator(data, CFG, cache=cache, device="cpu", log=logs.append)
    assert len(train_calls) == 2 and any("records fingerprint" in m for m in logs)
    assert (tmp_path / "gens" / "quarantine" / here["fingerprint"] / "generator.pt").read_bytes() == wrong
    assert gcache.inspect_entry(cache, here["fingerprint"]) == []


def test_a_truncated_training_checkpoint_restarts_training_from_zero(tmp_path) -> None:
    data = tiny_data()
    cache = str(tmp_path / "gens")
    paths = generator_paths(cache, generator_fingerprint(data.fingerprint, CFG))
    # An interrupted training left a checkpoint, then a crash mid-write truncated it.
    train_munit(data, CFG.model_copy(update={"steps": 2}), checkpoint_path=paths["training_checkpoint"],
                log=quiet)
    ck = tmp_path / "gens" / paths["fingerprint"] / "checkpoint.pt"
    _truncate(ck)
    assert "cannot be read" in gcache.inspect_entry(cache, paths["fingerprint"])[0][1]
    logs: list[str] = []
    get_generator(data, CFG, cache=cache, device="cpu", log=logs.append)
    assert any("step 0" in m and "checkpoint.pt" in m for m in logs)
    assert not any("resuming" in m for m in logs)
    assert (tmp_path / "gens" / "quarantine" / paths["fingerprint"] / "checkpoint.pt").exists()
    assert (tmp_path / "gens" / paths["fingerprint"] / "generator.pt").exists() and not ck.exists()


def test_generator_command_prints_the_quality_check(tmp_path, capsys) -> None:
    import yaml

    from git_ray.cli import main
    from tiny_configs import TINY_BASE, TINY_GEN

    cfg = tmp_path / "gen.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_BASE, "augment": {"git": True}, "generator": TINY_GEN}))
    assert main(["generator", str(cfg), "--out", str(tmp_path / "gens")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "label agreement" in x)
    assert "coverage distance" in line and ("passed" in line or "FAILED" in line)
    meta = json.loads(next((tmp_path / "gens").glob("*/meta.json")).read_text())
    assert f"label agreement {meta['quality']['label_agreement']:.3f}" in line


def test_generator_command_rescores_an_entry_scored_by_an_older_check(tmp_path, capsys) -> None:
    """A meta.json written before the check's revision (no check_version) is scored again by
    `git-ray generator`, its weights untouched; a current one is not scored twice."""
    import yaml

    from git_ray.cli import main
    from git_ray.generative.quality import QUALITY_CHECK_VERSION
    from tiny_configs import TINY_BASE, TINY_GEN

    cfg = tmp_path / "gen.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_BASE, "augment": {"git": True}, "generator": TINY_GEN}))
    args = ["generator", str(cfg), "--out", str(tmp_path / "gens")]
    assert main(args) == 0
    meta_path = next((tmp_path / "gens").glob("*/meta.json"))
    weights = (meta_path.parent / "generator.pt").read_bytes()
    meta = json.loads(meta_path.read_text())
    assert meta["quality"]["check_version"] == QUALITY_CHECK_VERSION
    old = {**meta, "quality": {k: v for k, v in meta["quality"].items() if k != "check_version"}}
    old["quality"]["coverage_distance"] = 0.0  # an old check's (flattering) number
    meta_path.write_text(json.dumps(old))
    capsys.readouterr()
    from git_ray.generative import quality_line
    assert "version 1 of the check" in quality_line(old["quality"])

    assert main(args) == 0
    out = capsys.readouterr().out
    assert "scored by version 1 of the quality check" in out
    new = json.loads(meta_path.read_text())
    assert new["quality"]["check_version"] == QUALITY_CHECK_VERSION
    assert new["quality"]["coverage_distance"] == meta["quality"]["coverage_distance"] != 0.0
    assert (meta_path.parent / "generator.pt").read_bytes() == weights
    assert main(args) == 0 and "scored by version" not in capsys.readouterr().out  # current: not again

    # A sweep's phase 0 loads through get_generators: a stale entry is scored again there too, so
    # the trials' rows carry the current check's numbers.
    from git_ray.config import load_trial_config
    from git_ray.data import build_dataset
    from git_ray.generative.cache import get_generators

    meta_path.write_text(json.dumps(old))
    trial = load_trial_config(str(cfg), [])
    (munit,) = get_generators([(build_dataset(trial.dataset), trial.generator)], cache=str(tmp_path / "gens"),
                              device="cpu", log=lambda m: None)
    assert not isinstance(munit, Exception)
    assert json.loads(meta_path.read_text())["quality"] == new["quality"]
