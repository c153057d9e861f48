"""git_ray: Ray-distributed sweeps for the invariance-transfer study of Zhou et al. (ICLR 2022)."""
__version__ = "0.1.0"
SCHEMA_VERSION = 3  # 2: trials.optuna_trial_number; 3: trials.generator_coverage, generator_label_agreement
