import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.func import functional_call

from mzsr import MZSRError
from mzsr.files.checkpoints import load_weights, save_weights
from mzsr.network.model import MZSRNet
from mzsr.training.maml import grouped_forward, inner_loop, meta_loss, query_loss_weights
from mzsr.training.meta import meta_train, split_pool, tasks_for_iteration
from mzsr.training.meta_step import MetaStep
from mzsr.training.optim import AdamTF1, make_optimizer
from training_helpers import make_training_data

MICRO = {
    "iterations": 6,
    "meta_batch": 2,
    "inner_steps": 2,
    "checkpoint_every": 3,
    "validate_every": 3,
    "validation_tasks": 2,
    "log_every": 1,
    "seed": 3,
    "scale": 2,
}


def tiny_theta(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3, 3, 3), (4,), (4, 4, 3, 3), (4,), (3, 4, 3, 3), (3,)]
    return [(0.3 * torch.randn(s, generator=g, dtype=torch.float64)).requires_grad_(True) for s in shapes]


def tiny_batch(tasks=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    mk = lambda: torch.rand(tasks, 2, 3, 6, 6, generator=g, dtype=torch.float64)  # noqa: E731
    return mk(), mk(), mk(), mk()


def _perturbed(theta, layer, idx, delta, batch, weights):
    """Meta-loss with one coordinate of theta moved by delta (the inner loop still needs autograd)."""
    moved = [p.detach().clone().requires_grad_(True) for p in theta]
    with torch.no_grad():
        moved[layer][idx] += delta
    return meta_loss(moved, batch, 2, 0.05, weights, False).item()


def test_meta_gradient_matches_finite_differences():
    theta, batch = tiny_theta(), tiny_batch()
    weights = [0.3, 0.7]
    loss = meta_loss(theta, batch, 2, 0.05, weights, first_order=False)
    grads = torch.autograd.grad(loss, theta)
    first = torch.autograd.grad(meta_loss(theta, batch, 2, 0.05, weights, first_order=True), theta)
    rng = np.random.default_rng(0)
    eps, checked, second_order_visible = 1e-6, 0, False
    for li, p in enumerate(theta):
        for _ in range(4):
            idx = tuple(int(rng.integers(n)) for n in p.shape)
            up, down = _perturbed(theta, li, idx, eps, batch, weights), _perturbed(theta, li, idx, -eps, batch, weights)
            fd = (up - down) / (2 * eps)
            assert grads[li][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)
            second_order_visible |= abs(first[li][idx].item() - fd) > 1e-4 * max(abs(fd), 1e-3)
            checked += 1
    assert checked == 24
    assert second_order_visible, "first-order gradient should differ from the true meta-gradient"


def test_meta_loss_is_the_release_mean_over_the_query_steps():
    """train.py: total_losses2[j] = sum over tasks of L_j / meta-batch; the meta-loss is
    reduce_mean(total_losses2 * loss_weights), the MEAN over the J steps (not their sum)."""
    theta, batch = tiny_theta(), tiny_batch(tasks=3)
    weights = [0.2, 0.3, 0.5]
    losses = inner_loop(theta, *batch, 3, 0.05, create_graph=False)  # (J, T)
    per_step = [sum(losses[j, t].item() for t in range(3)) / 3 for j in range(3)]
    release = sum(w * lj for w, lj in zip(weights, per_step)) / 3
    assert meta_loss(theta, batch, 3, 0.05, weights, first_order=True).item() == pytest.approx(release, rel=1e-12)


def test_grouped_tasks_equal_a_per_task_loop():
    model = MZSRNet().double()
    theta = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    sx, sy, qx, qy = (torch.rand(3, 2, 3, 8, 8, dtype=torch.float64) for _ in range(4))
    grouped = inner_loop(theta, sx, sy, qx, qy, steps=2, inner_lr=0.01, create_graph=False)
    for t in range(3):
        fast = dict(zip(names, theta))
        for j in range(2):
            loss = (functional_call(model, fast, (sx[t],)) - sy[t]).abs().mean()
            g = torch.autograd.grad(loss, list(fast.values()))
            fast = {n: w - 0.01 * gi for (n, w), gi in zip(fast.items(), g)}
            q = (functional_call(model, fast, (qx[t],)) - qy[t]).abs().mean()
            assert grouped[j, t].item() == pytest.approx(q.item(), rel=1e-10)
    out = grouped_forward([p.unsqueeze(0).expand(3, *p.shape) for p in theta], sx)
    torch.testing.assert_close(out[1], model(sx[1]))


def test_loss_weight_policies():
    assert query_loss_weights("uniform", 5, 10_000, 3200) == [0.2] * 5
    assert query_loss_weights("annealed", 5, 0, 3200) == pytest.approx([0.2] * 5)
    end = query_loss_weights("annealed", 5, 3200, 3200)
    assert end == pytest.approx([0.006] * 4 + [0.976])
    mid = query_loss_weights("annealed", 5, 1600, 3200)
    assert sum(mid) == pytest.approx(1.0) and mid[0] == pytest.approx(0.103)
    with pytest.raises(ValueError):
        query_loss_weights("cosine", 5, 0, 10)


def test_every_iteration_takes_fresh_training_tasks():
    val, train = split_pool(1010, 10, seed=3)
    assert len(val) == 10 and len(train) == 1000 and not set(val) & set(train)
    used = np.concatenate([tasks_for_iteration(train, 5, it) for it in range(200)])  # 200 iterations x 5
    assert len(used) == len(set(used)) == 1000 and not set(used) & set(val)
    np.testing.assert_array_equal(tasks_for_iteration(train, 5, 7), tasks_for_iteration(train, 5, 7))


@pytest.fixture(scope="module")
def meta_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta")
    # MICRO uses 6 iterations x 2 tasks and holds 2 aside: 2 shards of 7 tasks are exactly enough
    _, meta_store, shards = make_training_data(root, shards=2, tasks=7)
    init = root / "init.safetensors"
    torch.manual_seed(0)
    save_weights(init, MZSRNet().state_dict(), {"scale": 2, "degradation": "bicubic", "step": 0})
    return root, init, meta_store, shards


def _run_meta(root, init, store, shards, name, cfg, kill_after=None):
    """Run meta_train in a child process; optionally SIGKILL it right after iteration `kill_after`."""
    code = textwrap.dedent(f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from mzsr.training.meta import meta_train
        def hook(step):
            if step == {kill_after!r}:
                os.kill(os.getpid(), signal.SIGKILL)
        meta_train({str(init)!r}, {[str(s) for s in shards]!r}, {str(store)!r}, {str(root / (name + ".safetensors"))!r}, {cfg!r},
                   {str(root / name)!r}, {str(root / (name + ".csv"))!r}, device="cpu", on_step=hook)
    """)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}
    )


@pytest.mark.slow
def test_meta_training_resumes_to_identical_weights(meta_setup):
    root, init, store, shards = meta_setup
    full = _run_meta(root, init, store, shards, "full", MICRO)
    assert full.returncode == 0, full.stderr
    killed = _run_meta(root, init, store, shards, "resumed", MICRO, kill_after=4)
    assert killed.returncode == -9
    assert not (root / "resumed.safetensors").exists()
    assert (root / "resumed" / "last.pt").exists()
    again = _run_meta(root, init, store, shards, "resumed", MICRO)
    assert again.returncode == 0, again.stderr
    a, meta = load_weights(root / "full.safetensors")
    b, _ = load_weights(root / "resumed.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert meta["step"] == 6 and meta["source"] == "meta"
    start, _ = load_weights(init)
    assert any((a[k] - start[k]).abs().max() > 0 for k in a), "meta-training must change the weights"
    log = (root / "resumed.csv").read_text().splitlines()
    assert log[0].startswith("step,loss,psnr_0") and [r.split(",")[0] for r in log[1:]] == [
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
    ]


def test_meta_training_stops_on_nan(meta_setup):
    root, init, store, shards = meta_setup
    cfg = {**MICRO, "iterations": 2, "inner_lr": float("nan")}
    with pytest.raises(MZSRError, match="at step 0"):
        meta_train(init, shards, store, root / "nan.safetensors", cfg, root / "nan", root / "nan.csv", device="cpu")
    assert not (root / "nan.safetensors").exists()


def test_a_pool_too_small_for_the_run_is_an_error(meta_setup):
    root, init, store, shards = meta_setup
    cfg = {**MICRO, "iterations": 7}  # 7 x 2 = 14 training tasks, but 14 - 2 held aside leave 12
    message = (
        r"^the task shards hold 14 tasks; with 2 held aside for validation that leaves 12, fewer than the 14 "
        r"that 7 iterations x meta-batch 2 use \(raise tasks.count or leave it unset\)$"
    )
    with pytest.raises(MZSRError, match=message):
        meta_train(
            init, shards, store, root / "small.safetensors", cfg, root / "small", root / "small.csv", device="cpu"
        )
    assert not (root / "small" / "last.pt").exists()


def test_looped_and_grouped_task_forwards_agree():
    from mzsr.training.maml import looped_forward

    theta = tiny_theta()
    fast = [
        p.unsqueeze(0).expand(3, *p.shape) * (1 + 0.1 * torch.arange(3.0, dtype=p.dtype).reshape(-1, *[1] * p.dim()))
        for p in theta
    ]
    x = torch.rand(3, 2, 3, 7, 9, dtype=torch.float64)
    torch.testing.assert_close(looped_forward(fast, x), grouped_forward(fast, x))


@pytest.mark.slow
def test_first_order_warm_up_switches_to_second_order(meta_setup):
    """first_order_iterations = 2 (the release's SECOND_ORDER_GRAD_ITER): iterations 0-1 are exactly
    first-order MAML, iterations 2-3 second order, and a run resumed across the switch is unchanged."""
    root, init, store, shards = meta_setup

    def run(name, **cfg):
        out = root / f"{name}.safetensors"
        meta_train(
            init,
            shards,
            store,
            out,
            {**MICRO, "checkpoint_every": 2, "validate_every": 100, **cfg},
            root / name,
            root / f"{name}.csv",
            device="cpu",
        )
        return load_weights(out)[0]

    warm2 = run("warm", iterations=2, first_order_iterations=2)
    first2 = run("first2", iterations=2, first_order=True)
    second2 = run("second2", iterations=2)
    for k in warm2:
        torch.testing.assert_close(warm2[k], first2[k], rtol=0, atol=0)
    assert max((warm2[k] - second2[k]).abs().max() for k in warm2) > 0
    warm4 = run("warm", iterations=4, first_order_iterations=2)  # resumes the 2-iteration run
    first4 = run("first4", iterations=4, first_order=True)
    straight = run("straight", iterations=4, first_order_iterations=2)
    for k in warm4:
        torch.testing.assert_close(warm4[k], straight[k], rtol=0, atol=0)
    assert max((warm4[k] - first4[k]).abs().max() for k in warm4) > 0


# ------------------------------------------------------------------ the meta-step object

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device (CUDA graph capture); "
    "run on a GPU machine, or see benchmarks/speed/training.py --device cuda",
)


def _small_meta_batches(n, tasks=2, seed=5, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [
        tuple(torch.rand(tasks, 2, 3, 10, 10, generator=g, dtype=dtype).to(device) for _ in range(4)) for _ in range(n)
    ]


def _previous_eager_loop(model, optimizer, batches, cfg):
    """What meta_train ran per iteration before the meta-step object (the code of the previous commit)."""
    theta = list(model.parameters())
    losses = []
    for it, batch in enumerate(batches):
        weights = query_loss_weights("annealed", cfg["inner_steps"], it, 3, 0.006)
        first_order = it < cfg["first_order_iterations"]
        loss = meta_loss(theta, batch, cfg["inner_steps"], cfg["inner_lr"], weights, first_order)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _meta_step(theta, optimizer, cfg, device):
    """The meta-step meta_train builds for a meta config."""
    return MetaStep(
        theta, optimizer, cfg["inner_steps"], cfg["inner_lr"], device, cuda_graph=cfg.get("cuda_graph", False)
    )


def test_meta_step_gives_the_previous_eager_weights_bit_for_bit():
    """MetaStep on a CPU (cuda_graph true is ignored there) = the earlier meta_loss + backward +
    Adam, float32, across a first-order -> second-order switch and annealed weights."""

    cfg = {"inner_steps": 2, "inner_lr": 0.01, "first_order_iterations": 2, "cuda_graph": True}
    batches = _small_meta_batches(4)
    runs = []
    for new in (False, True):
        torch.manual_seed(0)
        model = MZSRNet(width=16, layers=4)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        if new:
            step = _meta_step(list(model.parameters()), opt, cfg, "cpu")
            assert not step.graphed and step.graph_count == 0
            seen = []
            losses = [
                step(b, query_loss_weights("annealed", 2, it, 3, 0.006), it < 2, check=seen.append).item()
                for it, b in enumerate(batches)
            ]
            assert len(seen) == 4
        else:
            losses = _previous_eager_loop(model, opt, batches, cfg)
        runs.append((losses, model.state_dict(), opt.state_dict()))
    (l0, w0, o0), (l1, w1, o1) = runs
    assert l0 == l1
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0)
    for i in o0["state"]:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(o0["state"][i][k], o1["state"][i][k], rtol=0, atol=0)
    assert o1["param_groups"][0]["capturable"] is False


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_step_loss_is_the_meta_loss_of_either_task_forward(first_order):
    """MetaStep.loss (the one the trainer runs) gives the per-task loop's meta-gradient in float64, and so
    does the grouped forward that GPUs run; second order really differs from first order."""
    from mzsr.training.maml import grouped_forward, looped_forward

    theta, batch = tiny_theta(), tiny_batch(tasks=3)
    weights = [0.3, 0.7]
    ref = torch.autograd.grad(meta_loss(theta, batch, 2, 0.05, weights, first_order, forward=looped_forward), theta)
    step = MetaStep(theta, torch.optim.Adam(theta), 2, 0.05, "cpu")
    grouped = torch.autograd.grad(
        meta_loss(theta, batch, 2, 0.05, weights, first_order, forward=grouped_forward), theta
    )
    for grads in (torch.autograd.grad(step.loss(batch, weights, first_order), theta), grouped):
        for g, r in zip(grads, ref):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-13)
    if not first_order:
        first = torch.autograd.grad(step.loss(batch, weights, True), theta)
        assert max(float((a - b).abs().max()) for a, b in zip(first, ref)) > 1e-8


def test_a_failed_graph_capture_falls_back_to_eager_with_one_warning():
    """Forced into graph mode on a CPU, the capture fails: one warning, theta and Adam state as before
    the warm-up, and the same weights as the eager step."""

    batches = _small_meta_batches(2, dtype=torch.float64)
    results = []
    for force in (False, True):
        theta = tiny_theta()
        opt = torch.optim.Adam(theta, lr=1e-2)
        step = MetaStep(theta, opt, 2, 0.05, "cpu")
        if force:
            step.graphed = True
            with pytest.warns(RuntimeWarning, match="CUDA graph capture failed") as record:
                step(batches[0], [0.5, 0.5], False)
            assert len(record) == 1 and step.fallback_reason and not step.graphed
        else:
            step(batches[0], [0.5, 0.5], False)
        step(batches[1], [0.5, 0.5], False)
        results.append([p.detach().clone() for p in theta] + [opt.state[theta[0]]["step"]])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_state_saved_under_a_cuda_graph_resumes_on_a_cpu(tmp_path):
    """Adam state saved with capturable=True (a CUDA-graph run) loads into a CPU run: MetaStep
    turns capturable off and keeps the step counters on the host; the run continues as if never saved."""
    from mzsr.training.meta_step import set_capturable
    from mzsr.training.state import load_training_state, save_training_state

    cfg = {"inner_steps": 2, "inner_lr": 0.05}
    batches = _small_meta_batches(3, dtype=torch.float64)

    def fresh():
        torch.manual_seed(0)
        model = MZSRNet(width=4, layers=3).double()
        return model, torch.optim.Adam(model.parameters(), lr=1e-2)

    model, opt = fresh()
    step = _meta_step(list(model.parameters()), opt, cfg, "cpu")
    for b in batches:
        step(b, [0.5, 0.5], False)
    straight = [p.detach().clone() for p in model.parameters()]

    model, opt = fresh()
    _meta_step(list(model.parameters()), opt, cfg, "cpu")(batches[0], [0.5, 0.5], False)
    opt.param_groups[0]["capturable"] = True  # as a CUDA-graph run saves it
    save_training_state(tmp_path, 1, model, opt)
    model, opt = fresh()
    load_training_state(tmp_path / "last.pt", model, opt)
    assert opt.param_groups[0]["capturable"] is True
    step = _meta_step(list(model.parameters()), opt, cfg, "cpu")
    assert opt.param_groups[0]["capturable"] is False
    assert all(s["step"].device.type == "cpu" and s["step"].dtype == torch.float32 for s in opt.state.values())
    for b in batches[1:]:
        step(b, [0.5, 0.5], False)
    for a, b in zip(straight, model.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    set_capturable(opt, True)  # the other way: counters go to the parameters' device as float32
    assert opt.param_groups[0]["capturable"] is True and all(
        s["step"].dtype == torch.float32 for s in opt.state.values()
    )


def test_cuda_graph_key_in_the_schema_configs_and_defaults():
    from pathlib import Path

    import jsonschema
    import yaml

    from mzsr.training.meta import META_DEFAULTS

    repo = Path(__file__).resolve().parents[1]
    schema = yaml.safe_load((repo / "mzsr/config.schema.yaml").read_text())
    meta = schema["properties"]["meta"]
    assert meta["properties"]["cuda_graph"]["type"] == "boolean" and meta["properties"]["cuda_graph"]["default"] is True
    assert META_DEFAULTS["cuda_graph"] is True
    assert set(meta["properties"]) - {"weights_folder"} <= set(META_DEFAULTS)
    jsonschema.validate({"cuda_graph": False}, meta)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"cuda_graph": "yes"}, meta)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"cuda_grahp": True}, meta)
    for cfg in ("config/config.yaml", "config/demo.yaml", "tests/micro.yaml"):
        assert yaml.safe_load((repo / cfg).read_text())["meta"]["cuda_graph"] is True, cfg


@needs_cuda
@pytest.mark.parametrize("optimizer", ["adam_tf1", "adam"])
def test_cuda_graph_meta_step_matches_eager_on_cuda(optimizer):
    """CUDA graph replay = the eager capturable step (TF32 off, float32, up to non-deterministic conv
    reductions), across a first-order -> second-order switch; keep_graphs=False keeps one graph."""

    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        batches = _small_meta_batches(5, tasks=3, device="cuda")
        runs = []
        for graph in (False, True):
            torch.manual_seed(0)
            model = MZSRNet().cuda()
            opt = (
                AdamTF1(model.parameters(), lr=1e-3)
                if optimizer == "adam_tf1"
                else torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
            )
            step = MetaStep(list(model.parameters()), opt, 2, 0.01, "cuda", cuda_graph=graph, keep_graphs=False)
            losses = [step(b, [0.4, 0.6], it < 2).item() for it, b in enumerate(batches)]
            assert step.graphed == graph and step.graph_count == int(graph), step.fallback_reason
            runs.append((losses, [p.detach().clone() for p in model.parameters()]))
        (l0, w0), (l1, w1) = runs
        assert l0 == pytest.approx(l1, rel=1e-5)
        for a, b in zip(w0, w1):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    finally:
        torch.backends.cudnn.allow_tf32 = saved


@needs_cuda
@pytest.mark.parametrize("optimizer", ["adam_tf1", "adam"])
def test_a_cpu_saved_state_resumes_under_a_cuda_graph(tmp_path, optimizer):
    """A CPU run's checkpoint (capturable=False, step counters on the host) resumes on CUDA in graph
    mode: the counters move to the device, the capture works, and the run continues."""
    from mzsr.training.state import load_training_state, save_training_state

    cfg = {"inner_steps": 2, "inner_lr": 0.01, "cuda_graph": True}
    batches = _small_meta_batches(3)
    torch.manual_seed(0)
    model = MZSRNet()
    opt = make_optimizer(optimizer, model.parameters(), 1e-3)
    _meta_step(list(model.parameters()), opt, cfg, "cpu")(batches[0], [0.5, 0.5], False)
    save_training_state(tmp_path, 1, model, opt)
    model = MZSRNet().cuda()
    opt = make_optimizer(optimizer, model.parameters(), 1e-3)
    load_training_state(tmp_path / "last.pt", model, opt)
    step = _meta_step(list(model.parameters()), opt, cfg, "cuda")
    assert opt.param_groups[0].get("capturable", True) is True
    for b in batches[1:]:
        loss = step(tuple(t.cuda() for t in b), [0.5, 0.5], False)
    assert step.graphed and step.graph_count == 1, step.fallback_reason
    assert torch.isfinite(loss) and all(float(s["step"]) == 3 for s in opt.state.values())


@pytest.mark.parametrize("optimizer", ["adam_tf1", "adam"])
@pytest.mark.parametrize("resumed", [False, True])
def test_graph_warm_up_leaves_no_trace(resumed, optimizer):
    """What the capture does before recording (warm-up steps, then theta and the Adam state put back,
    or zeroed when there was none) leaves the run exactly as if the warm-up had not happened."""

    batches = _small_meta_batches(3, dtype=torch.float64)
    runs = []
    for warm in (False, True):
        theta = tiny_theta()
        step = MetaStep(theta, make_optimizer(optimizer, theta, 1e-2), 2, 0.05, "cpu")
        if resumed:  # Adam state exists before the capture
            step(batches[2], [0.5, 0.5], True)
        if warm:
            snapshot = step._snapshot()
            for _ in range(3):
                step._eager(batches[0], [0.5, 0.5], False)
            step._restore(snapshot)
        for b in batches[:2]:
            step(b, [0.5, 0.5], False)
        runs.append([p.detach().clone() for p in theta] + [v for p in theta for v in step.optimizer.state[p].values()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
