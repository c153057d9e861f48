"""The fused-trials bench and the GPU session script run (tiny, on the CPU) and give the
figures they promise; no timing is asserted (figures depend on the machine)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python -m bench.X` runs from the repo root; pytest may not
    sys.path.insert(0, str(ROOT))

from bench import bench_fused  # noqa: E402


def test_bench_fused_reports_rates_per_group_and_the_projection(tmp_path):
    out = tmp_path / "fused.json"
    figs = bench_fused.main(["--device", "cpu", "--groups", "1,3", "--epochs", "2", "--images", "48",
                             "--batch", "16", "--width", "2", "--no-separate", "--gen-total", "50",
                             "--json", str(out)])
    for g in (1, 3):
        rate = figs[f"fused.g{g}.images_per_s"]
        assert math.isfinite(rate) and rate > 0
    assert figs["best_images_per_s"] == max(figs["fused.g1.images_per_s"], figs["fused.g3.images_per_s"])
    assert figs["input.generator.best_total_steps_per_s"] == 50  # as given
    parts = [v for k, v in figs.items() if k.startswith("k49_study.") and k.endswith("_gpu_h")
             and k not in ("k49_study.total_gpu_h", "k49_study.validation_full_split_gpu_h")]
    assert figs["k49_study.total_gpu_h"] == pytest.approx(sum(parts))
    saved = json.loads(out.read_text())
    assert saved["figures"] == figs and "cpu" in saved["machine"]


def test_gpu_session_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_session.sh")]).returncode == 0


@pytest.mark.slow
def test_gpu_session_cpu_smoke_runs_every_step(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    run = subprocess.run(["bash", "bench/gpu_session.sh", "--cpu-smoke"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    steps = (tmp_path / "steps.txt").read_text().splitlines()
    assert len(steps) == 6 and all("rc=0" in s for s in steps), steps
    equal = json.loads((tmp_path / "equality.json").read_text())["figures"]
    assert all(equal[f"member{g}.weight_rel_diff"] < 1e-3 for g in range(3))
    gens = json.loads((tmp_path / "generators.json").read_text())["figures"]
    assert gens["fused.g2.steps_per_s"] > 0 and gens["fused_vs_separate.g2"] > 0
    share = json.loads((tmp_path / "gpu_share.json").read_text())["figures"]
    assert share["generator.fused_total_steps_per_s"] == gens["best_steps_per_s"]
    assert share["generator.best_total_steps_per_s"] == max(gens["best_steps_per_s"],
                                                             share["generator.best_packed_total_steps_per_s"])
    fused = json.loads((tmp_path / "fused.json").read_text())["figures"]
    assert fused["fused_vs_separate.g2"] > 0 and fused["k49_study.total_gpu_h"] > 0
    assert "compile.none.g2.images_per_s" in json.loads((tmp_path / "compile.json").read_text())["figures"]
    assert "import git_ray.trial ok" in (tmp_path / "env.log").read_text()


def test_bench_fused_generators_reports_rates_per_group(tmp_path):
    from bench import bench_fused_generators

    out = tmp_path / "gens.json"
    common = ["--device", "cpu", "--groups", "1,2", "--steps", "2", "--warmup", "1", "--dim", "4", "--n-res", "1",
              "--mlp-dim", "8", "--images", "32", "--no-separate"]
    for stacking in ("stacked", "members"):  # the GPU path (stacked) and the CPU default, both on CPU
        figs = bench_fused_generators.main(common + ["--stacking", stacking, "--json", str(out)])
        assert all(math.isfinite(figs[f"fused.g{g}.steps_per_s"]) and figs[f"fused.g{g}.steps_per_s"] > 0
                   for g in (1, 2))
        assert figs["best_steps_per_s"] == max(figs["fused.g1.steps_per_s"], figs["fused.g2.steps_per_s"])
        assert json.loads(out.read_text())["figures"] == figs
