"""Smoke tests of the benchmarks (bench/): each bench's main runs at a tiny size on the CPU and
returns the figures it promises, so the benches do not rot. No timing is asserted here: the
figures' values depend on the machine. What is asserted is behaviour: the names, finite
positive rates, estimates that agree where they must, and the helpers the benches rely on."""
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python -m bench.X` runs from the repo root; pytest may not
    sys.path.insert(0, str(ROOT))

from bench import bench_ekld, bench_gpu_share, bench_sweep, bench_train_step, common, run_all  # noqa: E402


def _finite_positive(figs: dict, keys) -> None:
    for k in keys:
        assert k in figs, f"missing figure {k}; got {sorted(figs)}"
        assert math.isfinite(figs[k]) and figs[k] > 0, f"{k} = {figs[k]}"


def test_ekld_bench_reports_every_figure_per_nuisance(capsys):
    figs = bench_ekld.main(["--device", "cpu", "--classes", "6", "--images-per-class", "2", "--draws", "3",
                            "--no-diagnostics", "--threads", "1", "--profile"])
    out = capsys.readouterr().out
    assert "machine:" in out and "torch" in out
    assert "profile: our estimator" in out and "aten::" in out  # torch.profiler's table
    assert "profile: per-image path" in out and "cumulative" in out  # cProfile's
    for name in bench_ekld.NUISANCE_NAMES:
        assert name in out
        _finite_positive(figs, [f"{name}.{k}" for k in ("ours_draws_per_s", "per_image_draws_per_s",
                                                        "draw_speedup", "end_to_end_ratio", "ours_seconds",
                                                        "per_image_seconds")])
        for share in ("ours_model_share", "per_image_model_share"):
            assert 0 < figs[f"{name}.{share}"] < 1
        assert figs[f"{name}.pairs"] == 6 * 2 * 3
        assert f"{name}.ekld_pearson" in figs and f"{name}.ekld_rel_diff" in figs


def test_ekld_model_rates_by_batch_size():
    x = common.to_float(common.stroke_images(49, 2, 28, seed=3)[0])
    from git_ray.train.loop import Normaliser
    norm = Normaliser.fit(x)
    model = common.calibrated_model("resnet20", norm(x), 49, device=torch.device("cpu"))
    rates = bench_ekld.model_rates(model, norm, x, torch.device("cpu"), [4, 8], amp=False)
    _finite_positive(rates, ["model.img_per_s.batch4", "model.channels_last.img_per_s.batch8"])


def test_per_image_morphology_matches_git_ray_exactly():
    from PIL import Image
    import torchvision.transforms.functional as TF
    from git_ray.data.nuisances import _morph

    imgs, _ = common.stroke_images(4, 3, 28, seed=1)
    x = common.to_float(imgs)
    for k in (1, 2, 3, 4):
        for dilate in (True, False):
            pil = torch.stack([TF.to_tensor(common.pil_morph(Image.fromarray(a), k, dilate)) for a in imgs])
            assert torch.equal(pil, _morph(x, k, dilate)), (k, dilate)


def test_per_image_nuisances_keep_shape_and_background_rule():
    from PIL import Image

    imgs, _ = common.stroke_images(3, 2, 28, seed=2)
    rng = np.random.default_rng(0)
    for name in ("none", "rotation", "background", "dilation"):
        out = common.pil_nuisance(name)(Image.fromarray(imgs[0]), rng)
        assert out.size == (28, 28) and out.mode == "L"
    bg = np.array(common.pil_nuisance("background")(Image.fromarray(imgs[1]), rng))
    ink = imgs[1] > 0
    assert (bg[ink] == imgs[1][ink]).all() and len(np.unique(bg[~ink])) == 1  # one level, ink kept
    with pytest.raises(ValueError):
        common.pil_nuisance("nope")


def test_calibrated_model_gives_spread_logits():
    x = common.to_float(common.stroke_images(49, 3, 28)[0])
    model = common.calibrated_model("resnet20", (x - x.mean()) / x.std(), 49, device=torch.device("cpu"),
                                    logit_std=3.0)
    with torch.no_grad():
        logits = model((x - x.mean()) / x.std())
    assert 2.0 < float(logits.std()) < 4.5
    assert len(set(logits.argmax(1).tolist())) > 3  # not one class for everything


def test_train_step_bench_reports_every_mode(capsys):
    figs = bench_train_step.main(["--device", "cpu", "--archs", "resnet20", "--modes", "plain,oracle,git",
                                  "--steps", "1", "--warmup", "0", "--loader-batches", "1", "--images", "64",
                                  "--batch-size", "16",
                                  "--threads", "1", "--no-loop-check"])
    assert "resnet20" in capsys.readouterr().out
    for mode in ("plain", "oracle", "git"):
        key = f"resnet20.{mode}"
        _finite_positive(figs, [f"{key}.{k}" for k in ("images_per_s", "per_image_loader_images_per_s",
                                                       "per_image_step_images_per_s", "speedup_vs_per_image")])
        shares = [figs[f"{key}.{s}"] for s in ("data_share", "augment_share", "model_share")]
        assert abs(sum(shares) - 1) < 1e-6 and 0 < figs[f"{key}.per_image_loader_share"] < 1
    assert figs["resnet20.git.augment_share"] > figs["resnet20.plain.augment_share"]  # GIT generates


def test_train_step_loop_check_runs_the_real_loop():
    data, _, _ = bench_train_step.make_data("resnet32", 32, "background", seed=0)
    cfg = bench_train_step.trial_config("resnet32", "oracle", "background", batch_size=16)
    assert cfg.augment.flip and cfg.augment.oracle
    ips = bench_train_step.loop_images_per_s(data, cfg, torch.device("cpu"), None)
    assert math.isfinite(ips) and ips > 0


def test_gpu_share_bench_runs_on_cpu_and_projects():
    figs = bench_gpu_share.main(["--device", "cpu", "--procs", "1", "--gen-procs", "1", "--steps", "1",
                                 "--warmup", "0", "--gen-steps", "1", "--gen-warmup", "1", "--gen-dim", "8", "--images", "128",
                                 "--git-steps", "0"])
    assert figs["k49_lt_train_images"] == 7832
    _finite_positive(figs, ["classifier.n1.total", "generator.n1.total", "eval.eval_images_per_s",
                            "k49_study.total_gpu_h", "k49_study.generator_gpu_h"])
    assert figs["classifier.holds"] == 1


def test_projection_arithmetic_and_holds():
    p = bench_gpu_share.project_k49(train_total=7832 * 50 * 360 / 3600, eval_ips=1e12, ekld_s_per_trial=0.0,
                                    gen_total=60 * 10_000 / 3600, git_ips=None, n_train=7832)
    assert p["train_gpu_h"] == pytest.approx(1.0) and p["generator_gpu_h"] == pytest.approx(1.0)
    assert p["total_gpu_h"] == pytest.approx(2.0, rel=1e-6) and "git_extra_gpu_h" not in p
    rates = {1: {"per_process": 100.0}, 2: {"per_process": 95.0}, 4: {"per_process": 60.0}}
    assert bench_gpu_share.holds(rates) == 2


def test_sweep_bench_builds_the_same_trials_it_was_given(tmp_path):
    spec = bench_sweep.smaller_sweep(str(ROOT / "sweeps" / "quickstart.yaml"), str(tmp_path), trials=3,
                                     slots=2, epochs=4, git=False)
    from git_ray.sweep.spec import load_sweep
    orig = load_sweep(str(ROOT / "sweeps" / "quickstart.yaml"), storage=str(tmp_path))
    wanted = [c for c in orig.trial_configs() if not c.augment.git][:3]
    got = spec.trial_configs()
    assert len(got) == 3 and spec.max_concurrent_trials == 2 and spec.storage == str(tmp_path)
    for a, b in zip(got, wanted):
        assert a.train.epochs == 4 and a.train.s1 <= a.train.s2 <= 4
        assert a.model_copy(update={"train": b.train}).fingerprint() == b.fingerprint()


def test_run_all_reads_generator_lines_and_judges_targets():
    text = ("paper K49 (METHOD.md): 28x28x1, dim 64, n_res 4, batch 1: 12.5 steps/s -> 10000 steps in 13.3 min\n"
            "quickstart (digits 16 px): 16x16x1, dim 8, n_res 1, batch 8: 40.0 steps/s -> 300 steps in 0.1 min\n")
    assert run_all.parse_generator_output(text) == {"paper_k49.steps_per_s": 12.5, "quickstart.steps_per_s": 40.0}
    lines = run_all.summary({"ekld.rotation.draw_speedup": 5.0, "ekld.background.draw_speedup": 50.0,
                             "sweep.wall_over_ideal": 1.05, "sweep.overhead_per_trial_s": 3.0}, "cpu")
    text = "\n".join(lines)
    assert re.search(r"rotation.draw_speedup .*MISSED: 4.0x short", text)
    assert re.search(r"background.draw_speedup .*met", text)
    assert re.search(r"wall_over_ideal .*met", text) and re.search(r"overhead_per_trial_s .*MISSED", text)
    assert not any("draw_speedup" in l for l in run_all.summary({"ekld.rotation.draw_speedup": 5.0}, "cuda"))


def test_run_all_prints_the_machine_and_a_summary(capsys, tmp_path, monkeypatch):
    tiny = {"ekld": ["--device", "cpu", "--classes", "4", "--images-per-class", "1", "--draws", "2",
                     "--nuisances", "rotation", "--no-diagnostics"]}
    monkeypatch.setattr(run_all, "sizes", lambda mode, device: tiny)
    figs = run_all.main(["--quick", "--device", "cpu", "--only", "ekld", "--json", str(tmp_path / "f.json")])
    out = capsys.readouterr().out
    assert out.startswith("git_ray benchmarks (quick sizes) on machine:") and "torch" in out
    assert "summary against the targets" in out and "draw_speedup" in out
    assert "ekld.rotation.draw_speedup" in figs
    import json
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved["machine"]["cores"] >= 1 and saved["figures"] == figs


def test_sweep_bench_end_to_end_with_ray(tmp_path):
    """Ray start-up plus a pool and a sweep of one short trial: about a minute on 2 cores."""
    figs = bench_sweep.main(["--trials", "1", "--slots", "1", "--epochs", "1", "--storage", str(tmp_path)])
    _finite_positive(figs, ["ideal_s", "sweep_wall_s", "wall_over_ideal", "pool_wall_s", "ray_init_s",
                            "direct_trial_s_mean"])
    assert figs["finished"] == 1 and "overhead_per_trial_s" in figs


def test_generator_sweep_scores_one_setting_as_a_json_line(tmp_path, capsys):
    """bench/generator_sweep: the sweep file's base with overrides, trained and scored; the JSON
    line carries the overrides and the quality check's numbers; a bad override exits 2 first."""
    import json

    from bench import generator_sweep
    from tiny_configs import TINY_BASE, TINY_GEN, sweep_file

    path = sweep_file(tmp_path, "gen", base={**TINY_BASE, "generator": TINY_GEN})
    generator_sweep.main(["--sweep", str(path), "generator.steps=3", "generator.style_weight=2"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["overrides"] == ["generator.steps=3", "generator.style_weight=2"]
    assert 0 <= row["agreement"] <= 1 and 0 <= row["reach"] <= 1 and row["coverage"] >= 0
    assert row["copy"] > 0.15  # digits-BG: a copier is far from the true background spread
    assert row["passed"] == (row["agreement"] >= 0.9 and row["coverage"] <= 0.15) and row["train_s"] > 0
    with pytest.raises(SystemExit) as exc:
        generator_sweep.main(["--sweep", str(path), "generator.dim=wide"])
    assert exc.value.code == 2 and "generator.dim" in capsys.readouterr().err

    # --score-at: a line at each asked step, then the last; training time adds up across them.
    generator_sweep.main(["--sweep", str(path), "--score-at", "2,1", "generator.steps=3"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["train_s"] <= rows[1]["train_s"] <= rows[2]["train_s"] and rows[2]["train_s"] > 0
    assert len({r["copy"] for r in rows}) == 1  # the same sources and copier at every step
    for bad in ("3", "0", "two"):  # the last step is always scored; steps are whole and inside the run
        with pytest.raises(SystemExit) as exc:
            generator_sweep.main(["--sweep", str(path), "--score-at", bad, "generator.steps=3"])
        assert exc.value.code == 2 and "--score-at" in capsys.readouterr().err


def _digits_background():
    from git_ray.config import DatasetConfig
    from git_ray.data import build_dataset
    return build_dataset(DatasetConfig(source="digits", nuisance="background", profile="zipf", imbalance_ratio=10))


class _Copier(torch.nn.Module):
    """A 'generator' that returns its source whatever the style (its style encoder reads zeros)."""

    style_dim = 4

    def __init__(self):
        super().__init__()
        self.content_encoder = torch.nn.Identity()

    def style_encoder(self, x):
        return torch.zeros(len(x), self.style_dim)

    def decode(self, content, style):
        return content


def test_coverage_breakdown_rows_and_bins_read_a_copier():
    """bench/coverage_breakdown: a copier scores its copy row under every kind of style, the
    noise floor sits far below it, and by the source's own reading its generated medians climb
    bin after bin while the true nuisance's stay put (the signature of content carrying the draw)."""
    from bench import coverage_breakdown as cb
    from git_ray.generative.coverage import MEASURERS, CoverageSample, coverage_from_values
    from git_ray.registry import NUISANCES

    data = _digits_background()
    sample = CoverageSample(_Copier(), data, MEASURERS.build("background"), NUISANCES.build("background"),
                            device="cpu", seed=0, n=60)
    rows, true = cb.reference_rows(sample, styles=16, true_draws=64, x_train=data.x_train)
    assert list(rows) == ["random styles", "encoded, other", "encoded, same clean", "copier",
                          "nuisance on source", "noise floor"]
    score = {k: coverage_from_values(v, true)["coverage_distance"] for k, v in rows.items()}
    for k in ("random styles", "encoded, other", "encoded, same clean"):
        assert score[k] == pytest.approx(score["copier"])
    assert score["noise floor"] < 0.5 * score["copier"]
    bins = cb.by_source_bins(rows["random styles"], true, rows["copier"][:, 0], bins=4)
    assert [b["n"] for b in bins] == [15] * 4
    gen_mid, true_mid = [b["generated"][1] for b in bins], [b["true"][1] for b in bins]
    assert gen_mid == sorted(gen_mid) and gen_mid[-1] - gen_mid[0] > 3 * (max(true_mid) - min(true_mid))
    assert all(b["own_low"] <= b["generated"][1] <= b["own_high"] for b in bins)  # a copier reads its own


def test_coverage_breakdown_reads_the_draw_back_from_the_code_that_holds_it():
    """A copier's content code is its image, so the background level reads back from it almost
    exactly; its style code is constant and reads back nothing. A generator whose style encoder
    reads the background level off the border (and whose content holds nothing) reads the other way."""
    from bench import coverage_breakdown as cb
    from git_ray.generative.coverage import MEASURERS, CoverageSample, background_level
    from git_ray.registry import NUISANCES

    class _LevelStyle(_Copier):
        def __init__(self):
            super().__init__()
            del self.content_encoder  # a code that holds nothing
            self.content_encoder = lambda x: torch.zeros(len(x), 2, 3, 3)

        def style_encoder(self, x):  # x in [-1, 1]
            return background_level((x + 1) / 2)[:, None].expand(-1, self.style_dim)

    data = _digits_background()
    readings = {}
    for name, munit in (("copier", _Copier()), ("level", _LevelStyle())):
        sample = CoverageSample(munit, data, MEASURERS.build("background"), NUISANCES.build("background"),
                                device="cpu", seed=0, n=80)
        readings[name] = cb.code_readings(sample)
    assert readings["copier"]["content"] > 0.9 and readings["copier"]["style"] < 0.05, readings
    assert readings["level"]["style"] > 0.9 and readings["level"]["content"] < 0.05, readings


def test_coverage_breakdown_prints_every_row_and_refuses_bad_input(tmp_path, capsys):
    """The bench end to end on a saved (untrained) generator; a nuisance with nothing to measure,
    a file that is no generator and a generator for other images each exit 2 before any work."""
    from bench import coverage_breakdown as cb
    from git_ray.config import GeneratorConfig
    from git_ray.generative.cache import save_generator
    from git_ray.generative.networks import build_munit
    from tiny_configs import TINY_BASE, TINY_GEN, sweep_file

    sweep = sweep_file(tmp_path, "bd", base=TINY_BASE)
    gcfg = GeneratorConfig(**TINY_GEN)
    size = _digits_background().x_train.shape[-1]
    paths = {}
    for name, image_size in (("ok", size), ("other", 2 * size)):
        munit, _ = build_munit(in_channels=1, image_size=image_size, gcfg=gcfg, generator=torch.Generator().manual_seed(0))
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(save_generator(munit, gcfg, "data"))
    cb.main([str(paths["ok"]), "--sweep", str(sweep), "--n", "20", "--styles", "2", "--true-draws", "8", "--bins", "2"])
    out = capsys.readouterr().out
    for row in ("random styles", "encoded, other", "encoded, same clean", "copier", "nuisance on source", "noise floor"):
        assert re.search(rf"^  {row} +\d\.\d{{3}} +\d\.\d{{3}}$", out, re.M), out
    assert len(re.findall(r"^ +\d\.\d\d-\d\.\d\d +10 ", out, re.M)) == 2, out
    for code in ("style code", "content code"):
        assert re.search(rf"^  {code} +-?\d+\.\d{{3}}$", out, re.M), out
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for argv, says in (([str(paths["ok"]), "dataset.nuisance=none"], "no parameter to measure"),
                       ([str(tmp_path / "junk.pt")], "cannot load a generator"),
                       ([str(paths["other"])], "trained on")):
        with pytest.raises(SystemExit) as exc:
            cb.main(argv + ["--sweep", str(sweep)])
        assert exc.value.code == 2 and says in capsys.readouterr().err


def _digits_dilation():
    from git_ray.config import DatasetConfig
    from git_ray.data import build_dataset
    return build_dataset(DatasetConfig(source="digits", nuisance="dilation", profile="zipf", imbalance_ratio=10))


def test_dilation_bound_reads_the_nuisances_own_draws():
    """bench/dilation_bound: its offsets are Dilation's: each of the nuisance's own outputs is,
    pixel for pixel, its clean glyph at the offset read back, and the offsets read back come in
    the prior's proportions; strength 0 leaves every glyph at offset 0."""
    from bench import dilation_bound as db
    from git_ray.data.nuisances import Dilation

    prior = db.offset_prior(1.0)
    assert list(prior) == [-1, 0, 1, 2, 3] and sum(prior.values()) == pytest.approx(1.0)
    assert db.offset_prior(0.0) == {0: 1.0}
    offsets = list(prior)
    clean = _digits_dilation().x_train_clean[:300].repeat(8, 1, 1, 1)
    x = Dilation(strength=1.0)(clean, torch.Generator().manual_seed(0))
    own = db.own_offsets(x, clean, offsets)
    rebuilt = torch.stack([db.at_offset(clean[i:i + 1], offsets[o])[0] for i, o in enumerate(own.tolist())])
    assert torch.equal(rebuilt, x)
    freq = torch.bincount(own, minlength=len(offsets)).float() / len(own)
    assert torch.allclose(freq, torch.tensor(list(prior.values())), atol=0.03), freq


def test_dilation_bound_ideal_rows_follow_the_reading():
    """A reader that knows every draw puts the ideal generator on the noise floor; one that knows
    nothing puts it on the "no reading" row, far above; the copier is each source's own reading."""
    from bench import dilation_bound as db
    from git_ray.generative.coverage import MEASURERS, coverage_from_values

    prior = db.offset_prior(1.0)
    offsets, probs = list(prior), torch.tensor(list(prior.values()))
    clean = _digits_dilation().x_train_clean[:80]
    ladder = db.offset_ladder(clean, MEASURERS.build("dilation"))
    g = torch.Generator().manual_seed(1)
    own = torch.multinomial(probs, len(clean), replacement=True, generator=g)
    score = {}
    for name, post in (("knows", torch.nn.functional.one_hot(own, len(offsets)).float()),
                       ("blind", probs.expand(len(clean), -1))):
        rows, true = db.ideal_rows(ladder, own, post, offsets, probs, styles=32, true_draws=128, g=g)
        score[name] = {k: coverage_from_values(v, true)["coverage_distance"] for k, v in rows.items()}
    knows, blind = score["knows"], score["blind"]
    assert abs(knows["reader posterior"] - knows["noise floor"]) < 0.03 and knows["reader MAP"] == pytest.approx(
        knows["reader posterior"], abs=0.03)
    assert abs(blind["reader posterior"] - blind["no reading"]) < 0.04
    assert blind["reader posterior"] > 2 * knows["reader posterior"] and knows["copier"] > 3 * knows["noise floor"]
    rows, _ = db.ideal_rows(ladder, own, probs.expand(len(clean), -1), offsets, probs, styles=2, true_draws=2, g=g)
    torch.testing.assert_close(rows["copier"][:, 0], MEASURERS.build("dilation")(
        torch.cat([db.at_offset(clean[i:i + 1], offsets[o]) for i, o in enumerate(own.tolist())]), clean))


def test_dilation_bound_prints_its_rows_and_refuses_other_nuisances(tmp_path, capsys):
    """The bench end to end at a tiny size: the reader's accuracy and every row; another
    nuisance or an empty reader set exits 2 before any work."""
    from bench import dilation_bound as db
    from tiny_configs import TINY_BASE, sweep_file

    sweep = sweep_file(tmp_path, "db", base=TINY_BASE)
    db.main(["--sweep", str(sweep), "--epochs", "1", "--width", "4", "--reader-glyphs", "50", "--n", "20", "--styles", "4",
             "--true-draws", "8"])
    out = capsys.readouterr().out
    assert re.search(r"reader accuracy on the sources' own draws \(offsets \[-1, 0, 1, 2, 3\]\): \d\.\d{3}$", out, re.M)
    for row in ("copier", "nuisance on source", "no reading", "reader posterior", "reader MAP", "noise floor"):
        assert re.search(rf"^  {row} +\d\.\d{{3}}$", out, re.M), out
    for argv, says in ((["dataset.nuisance=background"], "dilation only"), (["--reader-glyphs", "0"], "at least 1")):
        with pytest.raises(SystemExit) as exc:
            db.main(["--sweep", str(sweep), *argv])
        assert exc.value.code == 2 and says in capsys.readouterr().err


def test_stroke_confound_rows_measure_what_they_say():
    """bench/stroke_confound: its sources are the pool's own images; re-stroking keeps the
    drawing and its class and only changes the kernel; with stroke width as the style the
    distance lies between the floor and a copier, and a pool drawn at one stroke kernel only
    (nothing to confound) puts that row on the floor."""
    from dataclasses import replace

    from bench import stroke_confound as sc
    from git_ray.data import glyphs
    from git_ray.data.nuisances import Dilation
    from git_ray.generative.coverage import coverage_from_values

    pool = sc.Pool(4)
    sel = torch.arange(0, 196, 2)  # 2 images of each class
    expect = torch.from_numpy(glyphs.render_pool(4, 2)["x_train"][sel.numpy()]).float().unsqueeze(1) / 255
    assert torch.equal(pool.image(pool.index[sel], pool.theta[sel]), expect)
    g = torch.Generator().manual_seed(0)
    owner = {m: c for c, ms in enumerate(pool.per_class) for m in ms}
    again = torch.cat([pool.restroked(pool.index[sel], g) for _ in range(20)])
    assert torch.equal(again % pool.drawings, (pool.index[sel] % pool.drawings).repeat(20))
    assert set(pool.kernel_of(again).tolist()) == set(range(pool.kernels))
    assert [owner[m] for m in again.tolist()] == pool.labels[sel].repeat(20).tolist()
    middle = torch.cat([pool.restroked(pool.index[sel], g, [1, 2]) for _ in range(20)])
    assert set(pool.kernel_of(middle).tolist()) == {1, 2}
    anyone = pool.any_master(pool.labels[sel], g)
    assert [owner[m] for m in anyone.tolist()] == pool.labels[sel].tolist()

    def scores(p):
        rows, true = sc.confound_rows(p, sel, Dilation(1.0), styles=16, true_draws=64,
                                      g=torch.Generator().manual_seed(1))
        return {k: coverage_from_values(v, true)["coverage_distance"] for k, v in rows.items()}

    s = scores(pool)
    assert s["noise floor"] + 0.05 < s["stroke as style"] < s["copier"] - 0.05, s
    one = scores(sc.Pool(4, replace(glyphs.RenderParams(), stroke_kernels=(1,))))
    assert abs(one["stroke as style"] - one["noise floor"]) < 0.03, one


def test_stroke_confound_prints_its_rows_and_refuses_other_data(tmp_path, capsys):
    """The bench end to end at a tiny size; another nuisance or source exits 2 before any work."""
    from bench import stroke_confound as sc
    from tiny_configs import TINY_BASE, sweep_file

    glyph_sweep = str(ROOT / "sweeps" / "glyphs_git_cpu.yaml")
    sc.main(["--sweep", glyph_sweep, "--per-class", "4", "--n", "20", "--styles", "4", "--true-draws", "8"])
    out = capsys.readouterr().out
    for row in ("copier", "stroke as style", "all but glyph as style", "noise floor"):
        assert re.search(rf"^  {row} +\d\.\d{{3}} +\d\.\d{{3}}$", out, re.M), out
    assert re.search(r"^  stroke as style, sources of stroke kernel \+1 \(n=\d+\): \d\.\d{3}$", out, re.M), out
    sc.main(["--sweep", glyph_sweep, "--per-class", "4", "--n", "20", "--styles", "4", "--true-draws", "8",
             "--kernels", "3", "1"])
    assert "stroke as style draws kernels [3, 1]" in capsys.readouterr().out
    digits = str(sweep_file(tmp_path, "sc", base=TINY_BASE))
    for argv, says in ((["--sweep", digits], "glyphs only"), (["--sweep", glyph_sweep, "dataset.nuisance=background"],
                                                              "glyphs only"),
                       (["--sweep", glyph_sweep, "--n", "0"], "at least 1"),
                       (["--sweep", glyph_sweep, "--kernels", "1", "5"], "the pool's stroke kernels are [-3, 1, 3, 7]")):
        with pytest.raises(SystemExit) as exc:
            sc.main(argv)
        assert exc.value.code == 2 and says in capsys.readouterr().err


def test_sweep_base_reads_an_extending_sweep_file_as_the_sweep_does(tmp_path):
    """bench.common.sweep_base resolves `extends` (the control sweep's base is the study's) and
    names the file when there is no base to read."""
    study = common.sweep_base(str(ROOT / "sweeps" / "glyphs_git_cpu.yaml"), ["seed=3"])
    control = common.sweep_base(str(ROOT / "sweeps" / "glyphs_git_control_cpu.yaml"), ["seed=3"])
    assert control == study and control.seed == 3
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: nothing\n")
    with pytest.raises(common.ConfigError, match="needs a `base` trial config"):
        common.sweep_base(str(empty), [])
