"""Benchmark of DP-SGD training: our numpy trainer vs Opacus, and time to a model.

Run with ``.venv/bin/python bench/bench_train.py`` (Opacus needs the optional
extra: ``pip install -e '.[bench-opacus]'``; without it those rows are skipped).

Setting (the same for every trainer): 200,000 rows × 50 features with a known
logistic signal, row-level units, logistic regression, Poisson sampling with
expected batch 1,000 (q = 0.005), 3 epochs (600 steps), σ = 1, C = 1, plain SGD
with the same learning rate on the noisy mean gradient.  Reported:

* examples/s = expected examples processed (q·N·steps = 600,000) / wall time of
  the training loop, for
  - ours: :func:`gateway.training.dpsgd.train` with the secure RandomSource;
  - Opacus, standard path: ``PrivacyEngine.make_private`` with a DataLoader
    (Poisson sampling through its DPDataLoader);
  - Opacus, fastest path: ``GradSampleModule`` + ``DPOptimizer`` fed with tensor
    batches drawn by a Poisson mask (no DataLoader);
* test accuracy of each, and of the non-private L-BFGS fit for reference;
* time from ``Gateway.submit_training`` to a usable model on the 100k-row
  sample data (policies/web.yaml), split into the synchronous part (validate,
  charge, read) and the background training.

The machine is small (2 cores, shared with other work), so absolute numbers
move between runs; the ratios are what matter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.privacy.events import dp_sgd_epsilon
from gateway.privacy.random import SecureRandom
from gateway.training.dpsgd import SGDConfig, prepare_units, train
from gateway.training.models import network_for
from gateway.training.nonprivate import fit_nonprivate

ROOT = Path(__file__).resolve().parents[1]


def make_data(rows: int, features: int, seed: int = 1) -> tuple[np.ndarray, ...]:
    rs = np.random.default_rng(seed)
    w = rs.normal(size=features) * 3.0 / np.sqrt(features)
    x = rs.uniform(-1.0, 1.0, size=(rows + 20_000, features))
    y = (rs.random(rows + 20_000) < 1.0 / (1.0 + np.exp(-(x @ w + 0.2)))).astype(np.float64)
    return x[:rows], y[:rows, None], x[rows:], y[rows:]


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p >= 0.5) == (y >= 0.5)))


def bench_ours(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, batch: int,
               epochs: int, lr: float, repeat: int) -> dict[str, Any]:
    n, d = x.shape
    q = batch / n
    steps = round(epochs / q)
    net = network_for("logistic", d, 1, True)
    times, accs = [], []
    for _ in range(repeat):
        rng = SecureRandom()
        t0 = time.perf_counter()
        data = prepare_units(np.arange(n), x, y, 1, rng)
        t1 = time.perf_counter()
        params = train(net, net.init(np.random.default_rng(0)), data,
                       SGDConfig(1.0, q, steps, 1.0, q * n, learning_rate=lr, optimizer="sgd",
                                 momentum=0.0), rng)
        t2 = time.perf_counter()
        times.append(t2 - t1)
        accs.append(accuracy(net.predict(params, xt)[:, 0], yt))
        setup = t1 - t0
    t = min(times)
    return {"name": "ours (numpy, closed-form per-unit norms)", "seconds": t,
            "median_s": statistics.median(times),
            "examples_per_s": q * n * steps / t, "accuracy": statistics.median(accs),
            "setup_s": setup, "steps": steps}


def bench_opacus(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, batch: int,
                 epochs: int, lr: float, threads: int, repeat: int) -> list[dict[str, Any]]:
    import torch
    from opacus import GradSampleModule, PrivacyEngine
    from opacus.optimizers import DPOptimizer
    from torch.utils.data import DataLoader, TensorDataset

    # One intra-op thread: on 2 shared cores torch's default pool was ~20x slower per
    # step under contention, and a 1000x50 layer gains nothing from threads.
    torch.set_num_threads(threads)
    n, d = x.shape
    q = batch / n
    steps = round(epochs / q)
    xs = torch.tensor(x, dtype=torch.float32)
    ys = torch.tensor(y, dtype=torch.float32)
    xts = torch.tensor(xt, dtype=torch.float32)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="mean")

    def test_acc(model: Any) -> float:
        with torch.no_grad():
            p = torch.sigmoid(model(xts))[:, 0].numpy()
        return accuracy(p, yt)

    def fresh() -> tuple[Any, Any]:
        torch.manual_seed(0)
        model = torch.nn.Linear(d, 1)
        torch.nn.init.zeros_(model.weight)
        torch.nn.init.zeros_(model.bias)
        return model, torch.optim.SGD(model.parameters(), lr=lr)

    def standard() -> tuple[float, float]:
        """DataLoader -> make_private (its DPDataLoader does the Poisson sampling)."""
        model, opt = fresh()
        loader = DataLoader(TensorDataset(xs, ys), batch_size=batch)
        engine = PrivacyEngine(accountant="prv")
        model, opt, loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0, poisson_sampling=True)
        t0 = time.perf_counter()
        for _ in range(epochs):
            for xb, yb in loader:
                opt.zero_grad(set_to_none=True)
                if len(xb):
                    loss_fn(model(xb), yb).backward()
                opt.step()
        return time.perf_counter() - t0, test_acc(model)

    def tensors() -> tuple[float, float]:
        """GradSampleModule + DPOptimizer on tensor batches drawn by a Poisson mask."""
        model, opt = fresh()
        gsm = GradSampleModule(model)
        dp_opt = DPOptimizer(opt, noise_multiplier=1.0, max_grad_norm=1.0,
                             expected_batch_size=batch)
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for _ in range(steps):
            mask = torch.rand(n, generator=gen) < q
            dp_opt.zero_grad(set_to_none=True)
            loss_fn(gsm(xs[mask]), ys[mask]).backward()
            dp_opt.step()
        return time.perf_counter() - t0, test_acc(gsm)

    out = []
    for name, run in (("Opacus, DataLoader + make_private", standard),
                      ("Opacus, GradSampleModule + DPOptimizer on tensors", tensors)):
        results = [run() for _ in range(repeat)]
        t = min(r[0] for r in results)
        out.append({"name": name, "seconds": t,
                    "median_s": statistics.median(r[0] for r in results),
                    "examples_per_s": q * n * steps / t,
                    "accuracy": statistics.median(r[1] for r in results)})
    return out


def bench_submit(repeat: int) -> dict[str, float]:
    from gateway import Gateway

    sync, total = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp, Gateway.open(
                ROOT / "policies" / "web.yaml", state=Path(tmp) / "state.db") as gw:
            who = gw.ledger.ensure_analyst("bench")
            t0 = time.perf_counter()
            model_id = gw.submit_training(
                who, "SELECT age, duration_s, device, country, spend, converted FROM visits",
                "converted", "logistic", 1.0, 1e-6)
            t1 = time.perf_counter()
            while gw.model(who, model_id)["status"] not in ("done", "failed"):
                time.sleep(0.01)
            t2 = time.perf_counter()
            assert gw.model(who, model_id)["status"] == "done"
            sync.append(t1 - t0)
            total.append(t2 - t0)
    return {"submit_returns_s": statistics.median(sync),
            "usable_model_s": statistics.median(total)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-opacus", action="store_true")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--repeat-opacus", type=int, default=2)
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores shared with other work (load average {load:.1f}); "
          f"numpy {np.__version__}; torch threads {args.torch_threads}")
    x, y, xt, yt = make_data(args.rows, args.features)
    q = args.batch / args.rows
    steps = round(args.epochs / q)
    print(f"data: {args.rows} rows x {args.features} features; q={q:g}, steps={steps}, "
          f"sigma=1, C=1 -> epsilon={dp_sgd_epsilon(1.0, q, steps, 1e-5):.3f} at delta=1e-5")
    net = network_for("logistic", args.features, 1, True)
    base = accuracy(net.predict(fit_nonprivate(net, x, y), xt)[:, 0], yt)
    print(f"non-private L-BFGS fit: test accuracy {base:.4f}")
    rows = [bench_ours(x, y, xt, yt, args.batch, args.epochs, args.lr, args.repeat)]
    if args.skip_opacus:
        print("Opacus skipped (--skip-opacus)")
    else:
        try:
            rows += bench_opacus(x, y, xt, yt, args.batch, args.epochs, args.lr,
                                 args.torch_threads, args.repeat_opacus)
        except ImportError as e:
            print(f"Opacus skipped: {e} (pip install -e '.[bench-opacus]')")
    print(f"\n{'trainer (best of repeats; median in brackets)':<52} {'seconds':>16} "
          f"{'examples/s':>12} {'accuracy':>9}")
    for r in rows:
        secs = f"{r['seconds']:.3f} ({r['median_s']:.3f})"
        print(f"{r['name']:<52} {secs:>16} {r['examples_per_s']:12,.0f} "
              f"{r['accuracy']:9.4f}")
    for r in rows[1:]:
        ratio = rows[0]["examples_per_s"] / r["examples_per_s"]
        print(f"speed-up of ours over {r['name']}: {ratio:.1f}x")
    sub = bench_submit(args.repeat)
    print(f"\nsample data (100k rows, ~22k users), logistic, epsilon=1: submit_training returns "
          f"in {sub['submit_returns_s']:.2f} s (validate, DP count, read rows, solve sigma, "
          f"charge); usable model after {sub['usable_model_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
