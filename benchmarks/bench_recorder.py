"""Overhead of tvtheory.recorder.Recorder on a plain PyTorch training loop (full-batch extras off).

Times the same loop (mini-batch SGD with cross-entropy on random data, tanh MLPs) with and without a Recorder:
per step the recorder adds one fused norm of the gradients; per epoch a copy of theta, one safetensors file and
the rewrite of run.json; at the end (``close``) the E2 cosines. Everything from creating the recorder (theta_0
written, versions read) to ``close`` is timed. Plain and recorded runs alternate
(``--repeats`` pairs after one warm-up pair); the overhead is median(recorded) / median(plain) - 1 per model.
On a shared machine that difference is noisy, so the time spent inside the recorder's calls (its creation, the
step hooks, the epoch boundaries and ``close``) is also summed and divided by the plain loop's median.
Target: at most 10 %.

    .venv/bin/python benchmarks/bench_recorder.py [--epochs 2] [--repeats 3] [--threads 1] \
        [--out runs/bench/recorder.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn

from tvtheory.io import versions, write_json_atomic
from tvtheory.recorder import Recorder

MODELS = {  # name: (widths, examples, batch size)
    "mlp 784-256-10, batch 32 (small steps)": ((784, 256, 10), 8192, 32),
    "mlp 784-1024-1024-10, batch 128": ((784, 1024, 1024, 10), 8192, 128),
}


def mlp(widths, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class Timed:
    """Wraps a recorder's methods to sum the wall time spent inside them (robust to a busy machine)."""

    METHODS = ("_read_gradient", "_after_step", "start_epoch", "end_epoch", "close")

    def __init__(self, recorder: Recorder):
        self.inside = 0.0
        for name in self.METHODS:
            setattr(recorder, name, self.wrap(getattr(recorder, name)))

    def wrap(self, method):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.inside += time.perf_counter() - start
        return timed


def run(widths, n, batch, epochs, recorded: bool) -> tuple[float, float]:
    """(wall time, time inside the recorder) of ``epochs`` epochs of SGD with or without a Recorder; the model and
    data are built outside the timing, the recorder (theta_0 written, versions read) inside it.
    """
    model = mlp(widths)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, widths[0], generator=g), torch.randint(0, widths[-1], (n,), generator=g)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        recorder = Recorder(model, optimizer, folder) if recorded else None
        created = time.perf_counter() - start
        timer = Timed(recorder) if recorder is not None else None
        for _ in range(epochs):
            if recorder is not None:
                recorder.start_epoch()
            for i in range(0, n, batch):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x[i:i + batch]), y[i:i + batch]).backward()
                optimizer.step()
            if recorder is not None:
                recorder.end_epoch()
        if recorder is not None:
            recorder.close()                                    # E2 against the final task vector
        return time.perf_counter() - start, 0.0 if timer is None else created + timer.inside


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench/recorder.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name, (widths, n, batch) in MODELS.items():
        plain, recorded, inside = [], [], []
        for i in range(args.repeats + 1):                       # the first pair warms up
            (t_plain, _), (t_rec, t_inside) = run(widths, n, batch, args.epochs, False), run(widths, n, batch,
                                                                                           args.epochs, True)
            if i:
                plain.append(t_plain)
                recorded.append(t_rec)
                inside.append(t_inside)
        params = sum(p.numel() for p in mlp(widths).parameters())
        row = {"model": name, "params": params, "steps_per_epoch": n // batch, "epochs": args.epochs,
               "plain_s": statistics.median(plain), "recorded_s": statistics.median(recorded),
               "inside_recorder_s": statistics.median(inside),
               "plain_all_s": plain, "recorded_all_s": recorded, "inside_recorder_all_s": inside}
        row["overhead"] = row["recorded_s"] / row["plain_s"] - 1
        row["inside_share"] = row["inside_recorder_s"] / row["plain_s"]
        rows.append(row)
        print(f"{name}: P = {params:,}, plain {row['plain_s']:.3f} s, recorded {row['recorded_s']:.3f} s, "
              f"overhead {100 * row['overhead']:+.1f} %; time inside the recorder {row['inside_recorder_s']:.3f} s = "
              f"{100 * row['inside_share']:.1f} % of the plain loop (target <= 10 %)", flush=True)
    write_json_atomic(args.out, {"config": vars(args), "versions": versions(), "rows": rows})
    print(f"wrote {args.out}")
    return 0 if all(r["inside_share"] <= 0.10 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
