#!/usr/bin/env python3
"""Time one CycleGAN training step in PyTorch (CPU), as a peer for Atelier's
Rust training benchmark.

Example:
  python bench/train_step.py --size 128 --batch 1 --ngf 64 --n-blocks 9 \\
      --threads 2 --warmup 2 --repeat 10 --json

The step is the reference CycleGAN iteration (pytorch-CycleGAN-and-pix2pix
``CycleGANModel.optimize_parameters`` with the default options), built from the
same pieces as ``bench/reference_cyclegan.py``:
  * G_A, G_B: ResnetGenerator(3, 3, ngf, InstanceNorm2d(affine=False,
    track_running_stats=False), use_dropout=False, n_blocks), reflect padding;
  * D_A, D_B: NLayerDiscriminator(3, ndf, n_layers=3, InstanceNorm2d);
  * init_weights('normal', 0.02) on all four (order G_A, G_B, D_A, D_B);
  * LSGAN loss (MSE to 1 / 0), lambda_A = lambda_B = 10, lambda_identity 0.5;
  * one ImagePool(50) per D;
  * Adam(lr 2e-4, betas (0.5, 0.999)): one over both Gs, one over both Ds.
One timed step = forward (fake_B = G_A(A), rec_A = G_B(fake_B),
fake_A = G_B(B), rec_B = G_A(fake_A)); G step with the Ds frozen (identity,
GAN and cycle losses, backward, step); D step (D_A on real_B and the pooled,
detached fake_B, D_B likewise, each 0.5 * (real + fake), backward, step).
With --autocast bf16 the forward passes and losses run under
torch.autocast('cpu', dtype=torch.bfloat16) (Atelier's `train --precision bf16` peer).
Data loading is not timed: the random inputs in [-1, 1) are generated up front,
a different (A, B) pair for every step.

With --json exactly one JSON object goes to stdout; otherwise one
human-readable line. Progress and library output go to stderr. Errors (missing
torch, bad options, non-finite losses) give a message on stderr and exit code 2.
"""

import argparse
import json
import math
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# Keep stdout clean for the result: whatever the libraries below print (Python
# or native code) goes to stderr; the result goes to the saved fd.
_RESULT_OUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def fail(msg):
    log("train_step.py: error: %s" % msg)
    sys.exit(2)


try:
    import torch
    import torch.nn as nn
except ImportError as e:
    fail("PyTorch is not importable (%s); run with a Python that has torch installed, "
         "e.g. /work/pyref/bin/python or bench/.venv (pip install -r bench/requirements.txt)" % e)

# Network definitions and CycleGAN pieces come from the reference trainer (one copy).
try:
    sys.path.insert(0, HERE)
    import reference_cyclegan as _ref  # noqa: E402
except ImportError as e:
    fail("cannot import bench/reference_cyclegan.py (%s); install bench/requirements.txt" % e)
refnets = _ref.refnets
ImagePool, LSGANLoss, set_requires_grad = _ref.ImagePool, _ref.LSGANLoss, _ref.set_requires_grad
PIECES_FROM = "bench/reference_cyclegan.py"


NETG_BLOCKS = {"resnet_6blocks": 6, "resnet_9blocks": 9}
LAMBDA_A = LAMBDA_B = 10.0
LAMBDA_IDT = 0.5
POOL_SIZE = 50
LR, BETAS = 2e-4, (0.5, 0.999)
LOSS_KEYS = ["loss_D_A", "loss_G_A", "loss_cycle_A", "loss_idt_A",
             "loss_D_B", "loss_G_B", "loss_cycle_B", "loss_idt_B", "loss_G"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="square crop size (multiple of 4, >= 24)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--ndf", type=int, default=64)
    ap.add_argument("--n-blocks", type=int, default=None,
                    help="generator residual blocks (default: from --netG, else 9)")
    ap.add_argument("--netG", default=None, choices=sorted(NETG_BLOCKS),
                    help="sets --n-blocks (6 or 9)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch.set_num_threads and torch.set_num_interop_threads")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--repeat", type=int, default=10, help="timed steps")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights, inputs and image pools")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a text line")
    ap.add_argument("--autocast", choices=["none", "bf16"], default="none",
                    help="bf16: the forward passes and losses under torch.autocast('cpu', "
                         "dtype=torch.bfloat16) (convolutions in bf16 with f32 parameters and "
                         "optimizer; backward outside the context, as PyTorch recommends), the "
                         "peer of Atelier's --precision bf16 training")
    ap.add_argument("--interleave", action="store_true",
                    help="driven step by step: print 'ready', then for every 'step' line read on "
                         "stdin run one step and print its milliseconds; at EOF the usual result "
                         "(so a caller can alternate its own steps with these under the same "
                         "machine load)")
    a = ap.parse_args(argv)
    from_netg = NETG_BLOCKS[a.netG] if a.netG else None
    if a.n_blocks is not None and from_netg is not None and a.n_blocks != from_netg:
        ap.error("--netG %s means %d blocks, but --n-blocks %d was given" % (a.netG, from_netg, a.n_blocks))
    a.n_blocks = a.n_blocks if a.n_blocks is not None else (from_netg if from_netg is not None else 9)
    if a.size < 24 or a.size % 4:
        ap.error("--size must be a multiple of 4 and >= 24 (got %d)" % a.size)
    if a.batch < 1 or a.ngf < 1 or a.ndf < 1 or a.n_blocks < 0:
        ap.error("--batch, --ngf, --ndf must be >= 1 and --n-blocks >= 0")
    if a.threads < 1 or a.repeat < 1 or a.warmup < 0:
        ap.error("--threads and --repeat must be >= 1, --warmup >= 0")
    return a


def build_nets(a):
    """Same construction and init order as bench/reference_cyclegan.py build_nets."""
    norm = refnets.get_norm_layer("instance")  # InstanceNorm2d(affine=False, track_running_stats=False)
    nets = {
        "G_A": refnets.ResnetGenerator(3, 3, a.ngf, norm_layer=norm, use_dropout=False, n_blocks=a.n_blocks),
        "G_B": refnets.ResnetGenerator(3, 3, a.ngf, norm_layer=norm, use_dropout=False, n_blocks=a.n_blocks),
        "D_A": refnets.NLayerDiscriminator(3, a.ndf, n_layers=3, norm_layer=norm),
        "D_B": refnets.NLayerDiscriminator(3, a.ndf, n_layers=3, norm_layer=norm),
    }
    for name in ("G_A", "G_B", "D_A", "D_B"):
        refnets.init_weights(nets[name], "normal", 0.02)
        nets[name].train()
    return nets


class CycleGANStep:
    def __init__(self, nets, seed, autocast="none"):
        import contextlib
        if autocast == "bf16":
            self.ac = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
        else:
            self.ac = contextlib.nullcontext
        self.G_A, self.G_B, self.D_A, self.D_B = (nets[n] for n in ("G_A", "G_B", "D_A", "D_B"))
        self.opt_g = torch.optim.Adam(list(self.G_A.parameters()) + list(self.G_B.parameters()),
                                      lr=LR, betas=BETAS)
        self.opt_d = torch.optim.Adam(list(self.D_A.parameters()) + list(self.D_B.parameters()),
                                      lr=LR, betas=BETAS)
        self.crit_gan = LSGANLoss()
        self.crit_l1 = nn.L1Loss()
        pool_rng = random.Random(seed + 1)  # as in reference_cyclegan.py
        self.pool_fake_a = ImagePool(POOL_SIZE, pool_rng)
        self.pool_fake_b = ImagePool(POOL_SIZE, pool_rng)

    def __call__(self, real_A, real_B):
        """One optimize_parameters(); returns the loss tensors (not synchronised/converted)."""
        G_A, G_B, D_A, D_B = self.G_A, self.G_B, self.D_A, self.D_B
        # forward
        with self.ac():
            fake_B = G_A(real_A)
            rec_A = G_B(fake_B)
            fake_A = G_B(real_B)
            rec_B = G_A(fake_A)

        # generators, Ds frozen
        set_requires_grad([D_A, D_B], False)
        self.opt_g.zero_grad()
        with self.ac():
            idt_A = G_A(real_B)
            loss_idt_A = self.crit_l1(idt_A, real_B) * LAMBDA_B * LAMBDA_IDT
            idt_B = G_B(real_A)
            loss_idt_B = self.crit_l1(idt_B, real_A) * LAMBDA_A * LAMBDA_IDT
            loss_G_A = self.crit_gan(D_A(fake_B), True)
            loss_G_B = self.crit_gan(D_B(fake_A), True)
            loss_cycle_A = self.crit_l1(rec_A, real_A) * LAMBDA_A
            loss_cycle_B = self.crit_l1(rec_B, real_B) * LAMBDA_B
            loss_G = loss_G_A + loss_G_B + loss_cycle_A + loss_cycle_B + loss_idt_A + loss_idt_B
        loss_G.backward()
        self.opt_g.step()

        # discriminators
        set_requires_grad([D_A, D_B], True)
        self.opt_d.zero_grad()
        fb = self.pool_fake_b.query(fake_B)
        with self.ac():
            loss_D_A = 0.5 * (self.crit_gan(D_A(real_B), True) + self.crit_gan(D_A(fb.detach()), False))
        loss_D_A.backward()
        fa = self.pool_fake_a.query(fake_A)
        with self.ac():
            loss_D_B = 0.5 * (self.crit_gan(D_B(real_A), True) + self.crit_gan(D_B(fa.detach()), False))
        loss_D_B.backward()
        self.opt_d.step()
        return (loss_D_A, loss_G_A, loss_cycle_A, loss_idt_A,
                loss_D_B, loss_G_B, loss_cycle_B, loss_idt_B, loss_G)


def run(a):
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(a.threads)
    except RuntimeError as e:  # only settable before any inter-op work
        log("note: set_num_interop_threads(%d) failed: %s" % (a.threads, e))

    random.seed(a.seed)
    torch.manual_seed(a.seed)
    nets = build_nets(a)
    params = {k: sum(p.numel() for p in v.parameters()) for k, v in nets.items()}
    params["total"] = sum(params.values())
    step = CycleGANStep(nets, a.seed, a.autocast)

    n_steps = a.warmup + a.repeat
    g = torch.Generator().manual_seed(a.seed)
    shape = (a.batch, 3, a.size, a.size)
    inputs = [(torch.rand(shape, generator=g) * 2 - 1, torch.rand(shape, generator=g) * 2 - 1)
              for _ in range(n_steps)]

    log("train_step: CycleGAN size %d batch %d ngf %d ndf %d n_blocks %d threads %d, "
        "%d warmup + %d timed steps, torch %s, nets from %s, params %s"
        % (a.size, a.batch, a.ngf, a.ndf, a.n_blocks, a.threads, a.warmup, a.repeat,
           torch.__version__, PIECES_FROM, json.dumps(params)))

    times_ms, losses = [], []
    source = inputs
    if a.interleave:
        def driven():
            i = 0
            for line in sys.stdin:
                if line.strip() != "step":
                    break
                yield inputs[i % len(inputs)]
                i += 1
        source = driven()
        _RESULT_OUT.write("ready\n")
        _RESULT_OUT.flush()
    for i, (real_A, real_B) in enumerate(source):
        t0 = time.perf_counter()
        out = step(real_A, real_B)
        dt = (time.perf_counter() - t0) * 1e3
        vals = {k: float(v.detach()) for k, v in zip(LOSS_KEYS, out)}  # outside the timed region
        bad = [k for k, v in vals.items() if not math.isfinite(v)]
        if bad:
            fail("step %d: non-finite losses %s" % (i, {k: vals[k] for k in bad}))
        losses.append(vals)
        if a.interleave:
            _RESULT_OUT.write("%.3f\n" % dt)
            _RESULT_OUT.flush()
        timed = i >= a.warmup
        if timed:
            times_ms.append(dt)
        log("  step %d%s: %.1f ms, loss_G %.4f loss_D_A %.4f loss_D_B %.4f"
            % (i, "" if timed else " (warmup)", dt, vals["loss_G"], vals["loss_D_A"], vals["loss_D_B"]))

    if n_steps >= 2 and losses[0]["loss_G"] == losses[-1]["loss_G"]:
        log("warning: loss_G did not change over %d steps (%.6f)" % (n_steps, losses[0]["loss_G"]))
    return times_ms, losses, params


def main(argv=None):
    a = parse_args(argv)
    try:
        times_ms, losses, params = run(a)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - report any failure as exit code 2
        fail("%s: %s" % (type(e).__name__, e))

    median = statistics.median(times_ms)
    res = {
        "name": "cyclegan_step",
        "size": a.size,
        "batch": a.batch,
        "ngf": a.ngf,
        "n_blocks": a.n_blocks,
        "threads": a.threads,
        "autocast": a.autocast,
        "median_ms": median,
        "min_ms": min(times_ms),
        "mean_ms": statistics.fmean(times_ms),
        "images_per_s": a.batch / (median / 1e3),
        "torch": torch.__version__,
        "steps": times_ms,
        # extra context (not needed for the comparison itself)
        "ndf": a.ndf,
        "warmup": a.warmup,
        "repeat": a.repeat,
        "seed": a.seed,
        "params": params,
        "loss_G_first": losses[0]["loss_G"],
        "loss_G_last": losses[-1]["loss_G"],
    }
    if a.json:
        line = json.dumps(res)
    else:
        line = ("cyclegan_step size %d batch %d ngf %d ndf %d n_blocks %d threads %d: "
                "median %.1f ms, min %.1f ms, mean %.1f ms over %d steps (%d warmup), %.3f images/s; "
                "params G %d + %d, D %d + %d (total %d); loss_G first %.4f last %.4f; torch %s"
                % (a.size, a.batch, a.ngf, a.ndf, a.n_blocks, a.threads, median, res["min_ms"],
                   res["mean_ms"], a.repeat, a.warmup, res["images_per_s"], params["G_A"], params["G_B"],
                   params["D_A"], params["D_B"], params["total"], res["loss_G_first"], res["loss_G_last"],
                   torch.__version__))
    _RESULT_OUT.write(line + "\n")
    _RESULT_OUT.flush()


if __name__ == "__main__":
    main()
