"""Fused generators (git_ray.generative.fused): G MUNITs stacked train as if alone, weights and
checkpoints both; resume from members' own checkpoints; a NaN member fails alone; the cache's
group training keeps each member's lock; a tiny fused sweep trains 2 generators in one task."""
from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from torch import nn

from git_ray.config import GeneratorConfig
from git_ray.generative.cache import (file_lock, generator_fingerprint, generator_paths, get_generators,
                                      inspect_entry)
from git_ray.generative.fused import StackedMunits, train_munits
from git_ray.generative.networks import AdaResBlock, ConvBlock, Munit
from git_ray.generative.train import MunitRun, load_checkpoint, train_munit
from git_ray.train.loop import NonFiniteLossError
from test_generative_train import TINY, params, tiny_data

STEPS = 5


def quiet(msg: str) -> None:
    pass


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def members(n: int = 3, steps: int = STEPS, **extra):
    """n generators with their own data (other class sizes), seeds and style weights."""
    counts = [(12, 4, 1), (5, 5, 5), (3, 9, 2), (7, 2, 6)]
    datas = []
    for i in range(n):
        d = tiny_data(counts=counts[i])
        d.x_train = d.x_train.roll(i, dims=-1)  # other images too, not only other sizes
        d.fingerprint = f"member{i}"
        datas.append(d)
    cfgs = [GeneratorConfig(steps=steps, seed=10 + i, style_weight=[None, 3.0, 0.5, None][i], lr=3e-3,
                            checkpoint_every=2, **TINY, **extra) for i in range(n)]
    return datas, cfgs


def normalised_biases(munit: Munit) -> set[str]:
    """Biases of the convolutions an instance norm (or AdaIN) follows: the norm subtracts them
    again, so they affect no output and get no gradient but rounding noise, which Adam's step
    normalisation turns into moves of about lr: any two summation orders (a grouped convolution
    against a plain one) leave them different. Compared by their effect (none) instead."""
    out = set()
    for name, m in munit.named_modules():
        if isinstance(m, ConvBlock) and isinstance(m[2], nn.InstanceNorm2d):
            out.add(f"{name}.1.bias")
        if isinstance(m, AdaResBlock):
            out |= {f"{name}.conv1.bias", f"{name}.conv2.bias"}
    return out


def close(p: torch.Tensor, q: torch.Tensor, rtol: float = 1e-9) -> bool:
    """Equal to `rtol` of the tensor's largest entry (float64 rounding differs by summation order)."""
    return p.shape == q.shape and torch.allclose(p, q, rtol=0, atol=rtol * float(p.abs().max()) + 1e-15)


def assert_same_generator(a: Munit, b: Munit, data) -> None:
    """Every weight that matters equal to float64 rounding, and so are the translations."""
    skip = normalised_biases(a)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(close(sa[k], sb[k]) for k in sa if k not in skip), [k for k in sa if not close(sa[k], sb[k])]
    assert_same_translations(a, b, data, 1e-9)


def assert_same_translations(a: Munit, b: Munit, data, rtol: float) -> None:
    """Both generators translate the same images and styles alike, to `rtol` of the largest pixel."""
    dev = next(a.parameters()).device
    x = data.x_train[:6].to(dev) * 2 - 1
    z = torch.randn(6, a.style_dim, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        assert close(a.eval().translate(x, z), b.eval().translate(x, z), rtol)


def assert_same_checkpoint(a: dict, b: dict) -> None:
    assert a["format"] == b["format"] and a["config"] == b["config"] and a["spec"] == b["spec"]
    assert a["step"] == b["step"] and a["data_fingerprint"] == b["data_fingerprint"]
    assert torch.equal(a["rng"], b["rng"])  # the same draws were made from each member's RNG
    munit = Munit.from_spec(a["spec"])
    names = {"munit": [n for n, _ in munit.named_parameters()]}
    skip = normalised_biases(munit)
    for net in ("munit", "dis"):
        assert a[net].keys() == b[net].keys()
        assert all(close(a[net][k], b[net][k]) for k in a[net] if k not in skip)
    for opt, net in (("opt_g", "munit"), ("opt_d", "dis")):
        assert a[opt]["param_groups"] == b[opt]["param_groups"]  # lr, betas, decay, param order
        assert a[opt]["state"].keys() == b[opt]["state"].keys()
        for i, s in a[opt]["state"].items():
            t = b[opt]["state"][i]
            assert float(s["step"]) == float(t["step"])
            if net == "munit" and names["munit"][i] in skip:
                continue
            assert close(s["exp_avg"], t["exp_avg"], 1e-8) and close(s["exp_avg_sq"], t["exp_avg_sq"], 1e-8)


def test_stacked_members_train_as_if_alone_weights_and_checkpoints(tmp_path, float64) -> None:
    datas, cfgs = members(3)
    paths = [str(tmp_path / "fused" / str(i) / "checkpoint.pt") for i in range(3)]
    fused = train_munits(list(zip(datas, cfgs, paths)), stacked=True, log=quiet)
    for i, (d, c) in enumerate(zip(datas, cfgs)):
        alone_path = str(tmp_path / "alone" / str(i) / "checkpoint.pt")
        alone = train_munit(d, c, checkpoint_path=alone_path, log=quiet)
        assert not isinstance(fused[i], Exception)
        assert_same_generator(fused[i], alone, d)
        assert_same_checkpoint(load_checkpoint(paths[i]), load_checkpoint(alone_path))
        assert (tmp_path / "fused" / str(i) / "samples.png").read_bytes().startswith(b"\x89PNG")
    # the members did differ: a stack that trained them alike would not match each alone
    assert not close(params(fused[0])[0], params(fused[1])[0])


def test_stacked_with_matmul_convolutions_trains_as_if_alone(float64) -> None:
    # conv="matmul": each convolution as unfold + a batched matmul over the members, not a grouped one
    datas, cfgs = members(2, steps=3)
    fused = train_munits(list(zip(datas, cfgs, [None, None])), stacked=True, conv="matmul", log=quiet)
    for i, (d, c) in enumerate(zip(datas, cfgs)):
        assert not isinstance(fused[i], Exception)
        assert_same_generator(fused[i], train_munit(d, c, log=quiet), d)
    assert not close(params(fused[0])[0], params(fused[1])[0])
    with pytest.raises(ValueError, match="conv='bmm': choose one of grouped, matmul"):
        train_munits(list(zip(datas, cfgs, [None, None])), stacked=True, conv="bmm", log=quiet)


def test_cuda_graph_needs_a_cuda_device() -> None:
    datas, cfgs = members(2, steps=1)
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA device, not cpu"):
        train_munits(list(zip(datas, cfgs, [None, None])), stacked=True, cuda_graph=True, log=quiet)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_stack_trains_as_eagerly_resumes_and_writes_lone_checkpoints(tmp_path, float64) -> None:
    # 3 eager warm-up steps, the capture, then replays. Float64: the eager and the graphed stack
    # may differ by summation order (cuBLAS keeps a workspace per stream), which float32 GAN
    # training amplifies to percents within 9 steps; in float64 the losses stayed within 1e-7 (on
    # an H200) while some weights did not stay within 1e-9 (most likely ones with near-zero
    # gradients, which Adam's normalised step moves apart, as the normalised biases above): the
    # translations are compared.
    datas, cfgs = members(3, steps=12)

    def run(graph: bool, tag: str, stop: int | None = None):
        seen: list[torch.Tensor] = []

        def record(step: int, losses: dict) -> None:
            if step == stop:
                raise Interrupt
            seen.append(losses["g"].cpu())
        paths = [str(tmp_path / tag / str(i) / "checkpoint.pt") for i in range(3)]
        out = train_munits(list(zip(datas, cfgs, paths)), device="cuda", stacked=True, conv="matmul",
                           cuda_graph=graph, callback=record, log=quiet)
        return out, torch.stack(seen), paths

    eager, eager_losses, _ = run(False, "eager")
    graphed, graphed_losses, paths = run(True, "graph")
    assert eager_losses.shape == graphed_losses.shape == (12, 3)
    assert close(graphed_losses, eager_losses, 1e-7)
    assert len(set(graphed_losses[-1].tolist())) == 3  # the members trained apart
    for a, b, d in zip(graphed, eager, datas):
        assert_same_translations(a, b, d, 1e-6)
    # interrupted after its checkpoint at step 4, a graphed stack resumes there (Adam's step
    # count back on the device for the capture) and ends where the uninterrupted one did
    out, _, resumed_paths = run(True, "resumed", stop=5)
    assert all(isinstance(o, Interrupt) for o in out)
    assert [load_checkpoint(p)["step"] for p in resumed_paths] == [4, 4, 4]
    resumed, resumed_losses, _ = run(True, "resumed")
    assert close(resumed_losses, graphed_losses[4:], 1e-7)
    for a, b, d in zip(resumed, graphed, datas):
        assert_same_translations(a, b, d, 1e-6)
    # the checkpoints are a lone run's: Adam's step count on the CPU, lr a float
    ck = load_checkpoint(paths[0])
    assert ck["step"] == 12 and ck["opt_g"]["state"][0]["step"].device.type == "cpu"
    assert isinstance(ck["opt_g"]["param_groups"][0]["lr"], float)
    lone = MunitRun(datas[0], cfgs[0], device="cuda", checkpoint_path=paths[0], log=quiet)
    assert lone.step == 12
    assert all(torch.equal(p.cpu(), q.cpu()) for p, q in zip(params(lone.munit), params(graphed[0])))


def test_members_in_turn_are_train_munit_exactly() -> None:
    datas, cfgs = members(2, steps=3)
    got = train_munits(list(zip(datas, cfgs, [None, None])), stacked=False, log=quiet)
    for d, c, m in zip(datas, cfgs, got):
        assert all(torch.equal(p, q) for p, q in zip(params(m), params(train_munit(d, c, log=quiet))))


class Interrupt(Exception):
    pass


def test_fused_group_resumes_each_member_from_its_own_checkpoint_step(tmp_path, float64) -> None:
    datas, cfgs = members(3, steps=6)
    paths = [str(tmp_path / str(i) / "checkpoint.pt") for i in range(3)]
    for i, stop in enumerate((3, 3, 5)):  # interrupted runs leave checkpoints at steps 2, 2 and 4
        def crash(step: int, losses: dict, stop: int = stop) -> None:
            if step == stop:
                raise Interrupt
        with pytest.raises(Interrupt):
            train_munit(datas[i], cfgs[i], checkpoint_path=paths[i], callback=crash, log=quiet)
    assert [load_checkpoint(p)["step"] for p in paths] == [2, 2, 4]
    logs: list[str] = []
    runs_seen: list[int] = []
    fused = train_munits(list(zip(datas, cfgs, paths)), stacked=True, log=logs.append,
                         callback=lambda step, losses: runs_seen.append(losses["g"].numel()))
    # members at step 2 trained stacked (2 at a time); the one at step 4 after them, alone
    assert runs_seen == [2] * 4 + [1] * 2
    assert sum("resuming" in m and "step 2" in m for m in logs) == 2
    assert sum("resuming" in m and "step 4" in m for m in logs) == 1
    for d, c, p, m in zip(datas, cfgs, paths, fused):
        assert_same_generator(m, train_munit(d, c, log=quiet), d)
        assert load_checkpoint(p)["step"] == 6


def test_a_nan_member_fails_alone_and_the_others_are_as_alone(tmp_path, float64) -> None:
    datas, cfgs = members(3, steps=4)
    datas[1].x_train[:] = float("nan")  # member 1's data is broken: its losses are NaN from step 0
    paths = [str(tmp_path / str(i) / "checkpoint.pt") for i in range(3)]
    fused = train_munits(list(zip(datas, cfgs, paths)), stacked=True, log=quiet)
    assert isinstance(fused[1], NonFiniteLossError) and "step 0" in str(fused[1])
    assert not (tmp_path / "1" / "checkpoint.pt").exists()  # nothing written for it
    for i in (0, 2):
        assert_same_generator(fused[i], train_munit(datas[i], cfgs[i], log=quiet), datas[i])
        assert load_checkpoint(paths[i])["step"] == 4
    with pytest.raises(NonFiniteLossError, match="non-finite at step 0"):  # alone it raises
        train_munit(datas[1], cfgs[1], log=quiet)


def test_stacking_needs_one_step_and_the_runtime_groups_by_architecture(float64) -> None:
    datas, cfgs = members(2, steps=2)
    runs = [MunitRun(d, c) for d, c in zip(datas, cfgs)]
    runs[1].step = 1
    with pytest.raises(ValueError, match="same step"):
        StackedMunits(runs)
    # another width: not stackable; each trains (alone) and still ends as train_munit's
    cfgs[1] = cfgs[1].model_copy(update={"dim": 6})
    seen: list[int] = []
    got = train_munits(list(zip(datas, cfgs, [None, None])), stacked=True, log=quiet,
                       callback=lambda s, losses: seen.append(losses["g"].numel()))
    assert seen == [1, 1, 1, 1]
    assert_same_generator(got[1], train_munit(datas[1], cfgs[1], log=quiet), datas[1])


def test_group_leaves_out_a_member_locked_elsewhere_and_waits_for_it(tmp_path) -> None:
    datas, cfgs = members(2, steps=2)
    cache = str(tmp_path / "gens")
    fps = [generator_fingerprint(d.fingerprint, c) for d, c in zip(datas, cfgs)]
    held, release = threading.Event(), threading.Event()

    def other_holder() -> None:  # another process's trainer holds member 1's lock for a while
        with file_lock(f"{cache}/{fps[1]}.lock", log=quiet):
            held.set()
            release.wait(10)

    t = threading.Thread(target=other_holder)
    t.start()
    held.wait(10)
    logs: list[str] = []
    threading.Timer(1.5, release.set).start()
    start = time.monotonic()
    got = get_generators(list(zip(datas, cfgs)), cache=cache, device="cpu", log=logs.append)
    t.join()
    assert time.monotonic() - start >= 1.5 and all(not isinstance(m, Exception) for m in got)
    assert any("waiting for" in m and fps[1] in m for m in logs)
    metas = [json.loads(open(generator_paths(cache, fp)["meta"]).read()) for fp in fps]
    assert [m["fused"] for m in metas] == [1, 1]  # member 0 trained in the group alone, 1 after it
    for fp in fps:
        assert (tmp_path / "gens" / fp / "generator.pt").is_file()
        assert not (tmp_path / "gens" / fp / "checkpoint.pt").exists()
    # a second call finds both in the cache and trains nothing
    logs.clear()
    again = get_generators(list(zip(datas, cfgs)), cache=cache, device="cpu", log=logs.append)
    assert all(not isinstance(m, Exception) for m in again) and not any("training" in m for m in logs)


def test_tiny_sweep_trains_two_generators_in_one_fused_task(tmp_path, ray_local, capsys) -> None:
    from git_ray.results import read_tables
    from git_ray.sweep.dryrun import dry_run
    from git_ray.sweep.runner import generator_groups, run_sweep
    from git_ray.sweep.spec import load_sweep
    from tiny_configs import TINY_BASE, TINY_GEN, sweep_file

    base = {**TINY_BASE, "augment": {"git": True, "git_start": "start", "gen_frac": 0.5}, "generator": TINY_GEN}
    path = sweep_file(tmp_path, "fgen", base=base, fuse=2, grid={"dataset.instance": [0, 1]})
    spec = load_sweep(path)
    assert [len(g) for g in generator_groups(spec)] == [2]
    assert "GIT generators: 2 distinct (phase 0 trains them fused: 1 task(s) of up to 2)" in dry_run(spec)
    counts = run_sweep(spec)
    assert counts["finished"] == 2 and counts["failed"] == 0
    assert "2 distinct generator(s) to train or find in the cache in 1 fused task(s)" in capsys.readouterr().out
    cache = tmp_path / "results" / "generators"
    entries = sorted(d for d in cache.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    assert len(entries) == 2
    for d in entries:  # each under its own fingerprint, trained in one group of 2
        meta = json.loads((d / "meta.json").read_text())
        assert meta["fingerprint"] == d.name and meta["fused"] == 2
        assert (d / "generator.pt").is_file() and (d / "samples.png").is_file()
        assert inspect_entry(str(cache), d.name) == []  # what `git-ray verify` checks: all well
    trials = read_tables(str(tmp_path / "results" / "fgen"))["trials"]
    assert len(trials) == 2 and trials["generator_coverage"].notna().all()
