"""Does torch.compile help bench's PGD-AT step here? One eager and one compiled cnn (Fashion-MNIST,
batch 128), the compiled one warmed up, then both interleaved (15 rounds, medians). Prints ms.
Usage: .venv/bin/python scripts/compile_check.py"""

import time

import torch

from bench import perf as bp
from bench.defenses import build_defense

cfg = bp.PerfConfig()
setup = bp.make_setup(cfg, 10)
x, y = setup.train_x[:128], setup.train_y[:128]


def side(compiled):
    d, m = build_defense("pgd-at"), bp.fresh_model(setup)
    opt = bp._sgd(m)
    f = torch.compile(m) if compiled else m
    return lambda: bp.sgd_step(d, f, opt, x, y)


eager, comp = side(False), side(True)
t = time.perf_counter()
comp()
comp()
print("compile warm-up (2 steps) s", round(time.perf_counter() - t, 1))
med, _ = bp.interleave({"eager": eager, "compiled": comp}, 15, setup.device)
print(
    {k: round(v * 1000, 1) for k, v in med.items()},
    "eager/compiled",
    round(med["eager"] / med["compiled"], 3),
)
