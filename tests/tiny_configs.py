"""Tiny trial and generator configs shared by the end-to-end sweep and cluster tests: digits,
a 4-wide CNN, 3 epochs, a handful of eKLD draws: seconds per trial on one core. `sweep_file`
writes a sweep file over them; `CHECKER` is the contract checker in the project's shared/ folder."""
from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent
# The project's shared/ beside the checkout (a git worktree one level deeper finds it above).
CHECKER = next((p / "shared" / "tools" / "check_results.py" for p in (ROOT.parent, ROOT.parent.parent)
                if (p / "shared" / "tools" / "check_results.py").is_file()),
               ROOT.parent / "shared" / "tools" / "check_results.py")

TINY_BASE = {
    "dataset": {"source": "digits", "nuisance": "background", "imbalance_ratio": 10},
    "model": {"arch": "small_cnn", "width": 4},
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.05, "warmup_epochs": 1, "s1": 1, "s2": 2, "threads": 1},
    "eval": {"ekld_images_per_class": 5, "ekld_draws": 4},
}
TINY_GEN = {"steps": 6, "batch_size": 4, "dim": 8, "style_dim": 4, "n_downsample": 1, "n_res": 1,
            "mlp_dim": 16, "checkpoint_every": 3}


def sweep_file(tmp_path: Path, name: str, **fields) -> Path:
    data = {"name": name, "storage": str(tmp_path / "results"), "resources_per_trial": {"cpu": 1},
            "max_concurrent_trials": 2, "base": TINY_BASE, **fields}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p
