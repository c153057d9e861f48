"""The `git-ray` command: train, sweep (and --dry-run), status, analyze, generator, verify.

Each subcommand validates its input and runs its preflight (git_ray.preflight: output locations
writable, data files present, devices and cluster resources there) before any work starts. A
user mistake ends with a one-paragraph message and exit status 2, never a bare traceback, with
nothing written; a failure inside the work itself exits 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from git_ray import __version__, preflight
from git_ray.config import ConfigError

EXAMPLES = """examples:
  git-ray train configs/digits_background.yaml --out results/one
  git-ray train configs/digits_background.yaml --set seed=1 --set balance.sampler=drs
  git-ray sweep sweeps/quickstart.yaml
  git-ray sweep sweeps/quickstart.yaml --resume
  git-ray sweep sweeps/k49_invariance.yaml --dry-run
  git-ray status results/quickstart
  git-ray analyze results/quickstart
  git-ray generator configs/digits_git.yaml --out results/gen
  git-ray verify results/quickstart --repair
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="git-ray",
        description="Ray-distributed sweeps for the study 'Do Deep Networks Transfer Invariances "
                    "Across Classes?' (ICLR 2022): long-tailed data, nuisances, balancing, GIT, "
                    "per-class eKLD and accuracy written to Parquet.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"git-ray {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="run one trial in-process (no Ray) and write its Parquet rows",
                       description="Run one trial from a trial config, in this process, without Ray. "
                                   "Writes the same trials/, per_class/ and epochs/ rows a sweep trial "
                                   "writes, under --out.")
    t.add_argument("config", help="trial config YAML (see configs/)")
    t.add_argument("--out", default=None, help="results folder (default: results/<config name>)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set balance.loss=ldam (repeatable)")
    t.add_argument("--device", default=None, help="cpu or cuda[:N]; default: train.device from the config")
    t.add_argument("--quiet", action="store_true", help="print only the summary")

    s = sub.add_parser("sweep", help="run a Ray Tune sweep (grid, random or Optuna search)",
                       description="Run every trial of a sweep file with Ray Tune and write their rows "
                                   "under <storage>/<name>/. Validates the whole sweep file first.")
    s.add_argument("sweep", help="sweep YAML (see sweeps/)")
    s.add_argument("--resume", action="store_true",
                   help="finish an interrupted sweep: finished trials are not run again")
    s.add_argument("--address", default=None,
                   help="Ray cluster address; 'auto' joins a running cluster (default: start local Ray)")
    s.add_argument("--storage", default=None, help="override the sweep file's storage (folder or s3:// URI)")
    s.add_argument("--max-concurrent", type=int, default=None, help="override max_concurrent_trials")
    s.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    s.add_argument("--dry-run", action="store_true",
                   help="list the trials, what storage already holds, the generators and an estimate; "
                        "start nothing")
    s.add_argument("--verbose", action="store_true",
                   help="show Ray Tune's own per-trial output and status tables (default: one progress display)")

    st = sub.add_parser("status", help="where a running or finished sweep stands",
                        description="Count a sweep's trials (done, stopped, failed, missing) against the "
                                    "sweep.yaml stored in its results folder, by group, and list the "
                                    "trials running now (from the driver's heartbeat, _status.json).")
    st.add_argument("results", help="results folder of one sweep: <storage>/<sweep name>")
    st.add_argument("--by", default=None, metavar="KEY",
                    help="group by this config key (dotted, e.g. balance.loss or a grid axis); "
                         "default: dataset.source/dataset.nuisance")

    a = sub.add_parser("analyze", help="tables, figures and an HTML report from Parquet results",
                       description="Read one or more results folders (local or s3:// URIs) and write "
                                   "summary tables (CSV, Markdown), PNG figures and report.html.")
    a.add_argument("results", nargs="+", help="results folder(s): <storage>/<sweep name>")
    a.add_argument("--out", default=None, help="where to write (default: <first results>/analysis)")

    g = sub.add_parser("generator", help="train (or find in the cache) the MUNIT generator a config needs",
                       description="Train the GIT generator for a trial config, or load it from the "
                                   "cache, and write a PNG grid of samples next to its checkpoint.")
    g.add_argument("config", help="trial config YAML")
    g.add_argument("--out", default=None, help="folder for the generator cache (default: generator.cache "
                                                "from the config, else results/generators)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    g.add_argument("--device", default=None, help="cpu or cuda[:N]")

    v = sub.add_parser("verify", help="read every file of a sweep and its generators; --repair quarantines the bad ones",
                       description="Read every results file of a sweep (trials, per_class, epochs, failed) and "
                                   "every file of its generator cache; report unreadable files, orphans, leftovers "
                                   "of interrupted writes, schema mismatches and misplaced generators. Exit 0 when "
                                   "clean, 1 when problems were found (also with --repair).")
    v.add_argument("results", help="a sweep's results folder: <storage>/<sweep name> (local or s3://)")
    v.add_argument("--repair", action="store_true",
                   help="move the bad files into <sweep>/quarantine/ (generators: <generators>/quarantine/), "
                        "never deleting them, so that the next run redoes those trials")
    v.add_argument("--generators", default=None,
                   help="the generator cache to check (default: from the sweep's sweep.yaml, else a "
                        "generators/ folder in or beside the results)")
    return p


def cmd_train(args: argparse.Namespace) -> int:
    from git_ray.config import load_trial_config

    cfg = load_trial_config(args.config, args.set)
    out = args.out or str(Path("results") / Path(args.config).stem)
    preflight.check_writable(out, "--out")
    preflight.check_generator_caches([cfg])
    preflight.check_trial_config(cfg, args.device)
    log = (lambda m: None) if args.quiet else (lambda m: print(f"[git-ray] {m}", flush=True))
    from git_ray.results import write_trial
    from git_ray.trial import default_generator_cache, run_trial, summary_line

    def report(row: dict) -> None:
        log(f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  train acc {row['train_accuracy']:.3f}  "
            f"val bal acc {row['val_balanced_accuracy']:.3f}  ({row['seconds']:.2f}s)")

    log(f"trial {cfg.fingerprint()}: {cfg.dataset.source}/{cfg.dataset.nuisance}, loss {cfg.balance.loss}, "
        f"sampler {cfg.balance.sampler}, reweight {cfg.balance.reweight}, git {cfg.augment.git}, seed {cfg.seed}")
    result = run_trial(cfg, device=args.device, report=report,
                       generator_cache=default_generator_cache(out), log=log)
    write_trial(out, result)
    print(f"trial {result.trial_id}: {summary_line(result)}")
    print(f"results: {out}/ (trials/, per_class/, epochs/)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from git_ray.sweep.spec import load_sweep

    spec = load_sweep(args.sweep, storage=args.storage, max_concurrent=args.max_concurrent)
    preflight.check_sweep_locations(spec, args.num_cpus)
    if args.dry_run:
        from git_ray.sweep.dryrun import dry_run

        # A dry run still lists a sweep meant for another machine (a cluster with the data and
        # the GPUs), then says what would stop it here, with the same exit status as a real run.
        try:
            preflight.check_sweep_inputs(spec, address=args.address, num_cpus=args.num_cpus)
            problem = None
        except ConfigError as err:
            problem = err
        print(dry_run(spec, num_cpus=args.num_cpus))
        if problem is not None:
            raise ConfigError(f"{problem}\n(the dry run above lists the sweep; run it where this holds)")
        return 0
    preflight.check_sweep_inputs(spec, address=args.address, num_cpus=args.num_cpus)
    from git_ray.sweep.runner import run_sweep_command

    args.spec = spec  # validated once: run_sweep_command does not load it again
    return run_sweep_command(args)


def cmd_status(args: argparse.Namespace) -> int:
    from git_ray.sweep.status import sweep_status

    print(sweep_status(args.results, by=args.by))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from git_ray.analysis import analyze, default_out
    from git_ray.analysis.load import find_sweeps

    find_sweeps(args.results)  # the folders exist and hold results
    preflight.check_writable(args.out or default_out(args.results), "--out")
    report = analyze(args.results, args.out or default_out(args.results))
    print(report.text)
    print(f"\ntables, figures and report.html: {report.out}")
    return 0


def cmd_generator(args: argparse.Namespace) -> int:
    from git_ray.config import load_trial_config
    from git_ray.data import build_dataset
    from git_ray.generative import (generator_fingerprint, generator_paths, get_generator, quality_line,
                                    read_generator_meta)
    from git_ray.train.loop import resolve_device

    cfg = load_trial_config(args.config, args.set)
    cache = args.out or cfg.generator.cache or "results/generators"
    preflight.check_writable(cache, "--out" if args.out else "generator.cache")
    preflight.check_generator(cfg, args.config)
    preflight.check_trial_config(cfg, args.device)
    device = resolve_device(cfg.train.device, args.device)
    data = build_dataset(cfg.dataset).to(device)
    get_generator(data, cfg.generator, cache=cache, device=device,
                  log=lambda m: print(f"[git-ray] {m}", flush=True))
    paths = generator_paths(cache, generator_fingerprint(data.fingerprint, cfg.generator))
    print(f"generator {paths['fingerprint']}:")
    print(f"  checkpoint: {paths['checkpoint']}")
    print(f"  samples:    {paths['samples']}")
    print(f"  {quality_line((read_generator_meta(data, cfg.generator, cache=cache) or {}).get('quality'))}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from git_ray.results.verify import format_report, repair, verify

    report = verify(args.results, args.generators)
    if args.repair and not report.clean:
        repair(report)
    print(format_report(report))
    return 0 if report.clean else 1


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "status": cmd_status, "analyze": cmd_analyze,
            "generator": cmd_generator, "verify": cmd_verify}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"git-ray {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        from git_ray.storage import StorageFullError, StorageUnavailableError

        if not isinstance(err, (StorageFullError, StorageUnavailableError)):
            raise
        # A full disk or an outage longer than the retry budget: the message says which and what to do.
        print(f"git-ray {args.command}: {err}", file=sys.stderr)
        return 1
    except FloatingPointError as err:  # NonFiniteLossError: the trial diverged, nothing was written
        print(f"git-ray {args.command}: the trial failed: {err}; no results were written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"git-ray {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
