#!/usr/bin/env python3
"""Reference CycleGAN trainer (PyTorch, CPU) for Atelier.

Written from the published defaults of pytorch-CycleGAN-and-pix2pix
(``train.py --model cycle_gan``), using the network definitions of
``tests/reference/refnets.py`` so the checkpoints have the reference's
``state_dict`` key names and can be imported into Atelier with
``atelier models import latest_net_G_A.pth --netG resnet_6blocks --ngf 16``.

What matches the reference (CycleGANModel, default options):
  * G_A: A->B and G_B: B->A, ResnetGenerator (resnet_6blocks / resnet_9blocks),
    instance norm (no affine, no running stats), no dropout, reflect padding;
  * D_A (judges domain B) and D_B (judges domain A): 70x70 PatchGAN
    NLayerDiscriminator, n_layers 3, instance norm;
  * init_weights('normal', 0.02) for all four networks;
  * LSGAN (MSE against 1.0 / 0.0 targets, same shape as the patch output);
  * lambda_A = lambda_B = 10 (cycle, L1), lambda_identity 0.5, i.e. the
    identity loss is L1 * lambda * 0.5;
  * an ImagePool of 50 fakes for each D (when full: with prob. 0.5 return a
    random stored image and store the new one in its place, else return the
    new one);
  * D loss = 0.5 * (MSE(D(real), 1) + MSE(D(fake.detach()), 0));
  * one Adam for both Gs, one Adam for both Ds, lr 2e-4, betas (0.5, 0.999);
  * per iteration: forward, G step with the Ds frozen, then D_A and D_B step;
  * batch 1; unaligned data: A walked in a shuffled order per epoch, B drawn
    at random; each image resized to load_size x load_size (bicubic), random
    crop crop_size, random horizontal flip, x/255*2-1.

Differences (all deliberate, see bench/README.md "Reference CycleGAN"):
  * wall-clock budget (--minutes) instead of epochs; the optional linear
    learning-rate decay (--lr-decay F) runs over the last fraction F of the
    budget (the reference decays linearly over the last n_epochs_decay epochs);
  * the last 10% of each folder (sorted by file name) is held out and never
    trained on (listed in OUT/split.json);
  * loss_log.jsonl holds the mean of each loss over each 50-iteration window
    (the reference prints the current iteration's losses).

Outputs in --out DIR (each file is written to a temporary name and then
renamed with os.replace, so a reader never sees a half-written file):
  latest_net_G_A.pth, latest_net_G_B.pth, latest_net_D_A.pth, latest_net_D_B.pth
      torch.save(net.state_dict()) of the CPU module, exactly like the
      reference's save_networks (no "module." prefix);
  train_state.pt      optimizers, iteration, epoch, elapsed time, RNG states
                      (for --resume; the image pools are not saved);
  loss_log.jsonl      one JSON object per 50 iterations;
  samples_latest.png  4 fixed held-out A images: real | G_A(real), one per row;
  split.json          training and held-out file lists;
  run_config.json     the options and versions of the (latest) run.
"""

import argparse
import glob
import json
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..", "tests", "reference")))
import refnets  # noqa: E402

NET_NAMES = ("G_A", "G_B", "D_A", "D_B")
LOG_EVERY = 50
HELD_OUT_FRACTION = 0.1
N_SAMPLES = 4
IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


def log(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------

def list_images(folder):
    files = sorted(f for f in glob.glob(os.path.join(folder, "*"))
                   if os.path.isfile(f) and f.lower().endswith(IMG_EXTS))
    if not files:
        raise SystemExit("no images found in %s" % folder)
    return files


def split_held_out(files):
    """Last 10% of the sorted list (at least one file) is held out."""
    n_hold = max(1, int(len(files) * HELD_OUT_FRACTION))
    if len(files) - n_hold < 1:
        raise SystemExit("need at least 2 images per folder")
    return files[:-n_hold], files[-n_hold:]


def load_resized(path, load_size):
    # Reference: Image.open(path).convert('RGB') then transforms.Resize([load, load], BICUBIC).
    img = Image.open(path).convert("RGB")
    if img.size != (load_size, load_size):
        img = img.resize((load_size, load_size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8).copy()  # H x W x 3


def to_tensor(arr):
    """uint8 HxWx3 -> float 1x3xHxW in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()
    return (t / 255.0 * 2.0 - 1.0).unsqueeze(0)


def augment(arr, crop_size, rng):
    """Random crop_size crop + random horizontal flip (p = 0.5)."""
    h, w, _ = arr.shape
    if crop_size > h or crop_size > w:
        raise SystemExit("crop size %d larger than image %dx%d" % (crop_size, h, w))
    y = rng.randint(0, h - crop_size)
    x = rng.randint(0, w - crop_size)
    out = arr[y:y + crop_size, x:x + crop_size]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return out


class UnalignedData:
    """Like the reference's UnalignedDataset with a shuffling DataLoader:
    an epoch has max(|A|, |B|) items; item i uses A[perm[i] % |A|] and a random B."""

    def __init__(self, imgs_a, imgs_b, crop_size, rng):
        self.a, self.b, self.crop, self.rng = imgs_a, imgs_b, crop_size, rng
        self.epoch_len = max(len(imgs_a), len(imgs_b))
        self.order, self.pos = [], 0

    def next(self):
        """Returns (real_A, real_B, new_epoch_started)."""
        new_epoch = False
        if self.pos >= len(self.order):
            self.order = list(range(self.epoch_len))
            self.rng.shuffle(self.order)
            self.pos, new_epoch = 0, True
        ia = self.order[self.pos] % len(self.a)
        self.pos += 1
        ib = self.rng.randint(0, len(self.b) - 1)
        ra = to_tensor(augment(self.a[ia], self.crop, self.rng))
        rb = to_tensor(augment(self.b[ib], self.crop, self.rng))
        return ra, rb, new_epoch


# --------------------------------------------------------------------------
# CycleGAN pieces
# --------------------------------------------------------------------------

class ImagePool:
    """The reference's image buffer of previously generated images."""

    def __init__(self, pool_size, rng):
        self.pool_size, self.rng, self.images = pool_size, rng, []

    def query(self, images):
        if self.pool_size == 0:
            return images
        out = []
        for image in images:
            image = image.detach().unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image)
                out.append(image)
            elif self.rng.uniform(0, 1) > 0.5:
                rid = self.rng.randint(0, self.pool_size - 1)
                tmp = self.images[rid].clone()
                self.images[rid] = image
                out.append(tmp)
            else:
                out.append(image)
        return torch.cat(out, 0)


class LSGANLoss(nn.Module):
    """GANLoss('lsgan'): MSE against a target tensor of 1.0 (real) / 0.0 (fake)."""

    def __init__(self):
        super().__init__()
        self.mse = nn.MSELoss()

    def forward(self, prediction, target_is_real):
        target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
        return self.mse(prediction, target)


def set_requires_grad(nets, flag):
    for net in nets:
        for p in net.parameters():
            p.requires_grad = flag


def build_nets(args, device):
    norm = refnets.get_norm_layer("instance")
    n_blocks = {"resnet_6blocks": 6, "resnet_9blocks": 9}[args.netG]
    nets = {
        "G_A": refnets.ResnetGenerator(3, 3, args.ngf, norm_layer=norm, use_dropout=False, n_blocks=n_blocks),
        "G_B": refnets.ResnetGenerator(3, 3, args.ngf, norm_layer=norm, use_dropout=False, n_blocks=n_blocks),
        "D_A": refnets.NLayerDiscriminator(3, args.ndf, n_layers=3, norm_layer=norm),
        "D_B": refnets.NLayerDiscriminator(3, args.ndf, n_layers=3, norm_layer=norm),
    }
    for name in NET_NAMES:  # same order as the reference's define_G/define_D calls
        refnets.init_weights(nets[name], "normal", 0.02)
        nets[name].to(device).train()
    return nets


# --------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------

def atomic_torch_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def cpu_state_dict(net):
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def save_checkpoint(out, nets, opt_g, opt_d, state, sample_a, rngs):
    for name in NET_NAMES:
        atomic_torch_save(cpu_state_dict(nets[name]), os.path.join(out, "latest_net_%s.pth" % name))
    train_state = dict(state)
    train_state.update({
        "optimizer_G": opt_g.state_dict(),
        "optimizer_D": opt_d.state_dict(),
        "py_random": rngs["data"].getstate(),
        "pool_random": rngs["pool"].getstate(),
        "torch_rng": torch.get_rng_state(),
    })
    atomic_torch_save(train_state, os.path.join(out, "train_state.pt"))
    write_samples(os.path.join(out, "samples_latest.png"), nets["G_A"], sample_a)


@torch.no_grad()
def write_samples(path, g_a, sample_a):
    # Instance norm without running stats: train/eval make no difference here.
    rows = []
    for x in sample_a:
        y = g_a(x)
        pair = torch.cat([x, y], dim=3)[0]  # 3 x H x 2W
        rows.append(pair)
    grid = torch.cat(rows, dim=1)  # 3 x nH x 2W
    arr = ((grid.clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    tmp = path + ".tmp.png"
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-a", required=True, help="folder of domain A images (photos)")
    p.add_argument("--data-b", required=True, help="folder of domain B images (style)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs)")
    p.add_argument("--netG", default="resnet_9blocks", choices=["resnet_6blocks", "resnet_9blocks"])
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--load-size", type=int, default=256)
    p.add_argument("--crop-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--beta1", type=float, default=0.5)
    p.add_argument("--lambda-A", type=float, default=10.0)
    p.add_argument("--lambda-B", type=float, default=10.0)
    p.add_argument("--lambda-identity", type=float, default=0.5)
    p.add_argument("--pool-size", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock training budget (total, including time before --resume)")
    p.add_argument("--max-iters", type=int, default=None, help="stop after this many iterations (total)")
    p.add_argument("--checkpoint-every-min", type=float, default=10.0)
    p.add_argument("--lr-decay", type=float, default=0.0,
                   help="decay lr linearly to 0 over this last fraction of the budget (0 = off)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.minutes is None and args.max_iters is None:
        p.error("give --minutes and/or --max-iters")
    if not 0.0 <= args.lr_decay <= 1.0:
        p.error("--lr-decay must be in [0, 1]")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    device = torch.device(args.device)
    os.makedirs(args.out, exist_ok=True)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rngs = {"data": random.Random(args.seed), "pool": random.Random(args.seed + 1)}

    # ---- data (held-out split: last 10% of each sorted folder) ----
    files_a, files_b = list_images(args.data_a), list_images(args.data_b)
    train_a, held_a = split_held_out(files_a)
    train_b, held_b = split_held_out(files_b)
    split = {"held_out_fraction": HELD_OUT_FRACTION, "rule": "last 10% of each folder, sorted by name",
             "train_A": train_a, "held_out_A": held_a, "train_B": train_b, "held_out_B": held_b}
    with open(os.path.join(args.out, "split.json.tmp"), "w") as f:
        json.dump(split, f, indent=1)
    os.replace(os.path.join(args.out, "split.json.tmp"), os.path.join(args.out, "split.json"))
    t0 = time.time()
    imgs_a = [load_resized(f, args.load_size) for f in train_a]
    imgs_b = [load_resized(f, args.load_size) for f in train_b]
    sample_a = [to_tensor(load_resized(f, args.load_size)).to(device) for f in held_a[:N_SAMPLES]]
    log("data: A %d train / %d held out, B %d train / %d held out (loaded in %.1fs)"
        % (len(train_a), len(held_a), len(train_b), len(held_b), time.time() - t0))
    data = UnalignedData(imgs_a, imgs_b, args.crop_size, rngs["data"])

    # ---- model ----
    nets = build_nets(args, device)
    params = {k: sum(p.numel() for p in v.parameters()) for k, v in nets.items()}
    log("params: %s" % json.dumps(params))
    opt_g = torch.optim.Adam(list(nets["G_A"].parameters()) + list(nets["G_B"].parameters()),
                             lr=args.lr, betas=(args.beta1, 0.999))
    opt_d = torch.optim.Adam(list(nets["D_A"].parameters()) + list(nets["D_B"].parameters()),
                             lr=args.lr, betas=(args.beta1, 0.999))
    crit_gan = LSGANLoss().to(device)
    crit_l1 = nn.L1Loss()
    pool_fake_a = ImagePool(args.pool_size, rngs["pool"])
    pool_fake_b = ImagePool(args.pool_size, rngs["pool"])

    state = {"iter": 0, "epoch": 0, "elapsed_s": 0.0}
    if args.resume:
        ts_path = os.path.join(args.out, "train_state.pt")
        if not os.path.exists(ts_path):
            raise SystemExit("--resume: %s not found" % ts_path)
        for name in NET_NAMES:
            sd = torch.load(os.path.join(args.out, "latest_net_%s.pth" % name), map_location=device)
            nets[name].load_state_dict(sd)
        ts = torch.load(ts_path, map_location="cpu", weights_only=False)
        opt_g.load_state_dict(ts["optimizer_G"])
        opt_d.load_state_dict(ts["optimizer_D"])
        state = {"iter": ts["iter"], "epoch": ts["epoch"], "elapsed_s": ts["elapsed_s"]}
        rngs["data"].setstate(ts["py_random"])
        rngs["pool"].setstate(ts["pool_random"])
        torch.set_rng_state(ts["torch_rng"])
        log("resumed at iter %d (%.1f min trained); image pools start empty"
            % (state["iter"], state["elapsed_s"] / 60))

    with open(os.path.join(args.out, "run_config.json"), "w") as f:
        json.dump({"args": vars(args), "torch": torch.__version__, "numpy": np.__version__,
                   "python": sys.version.split()[0], "params": params,
                   "n_train_A": len(train_a), "n_train_B": len(train_b),
                   "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, f, indent=1)

    budget_s = None if args.minutes is None else args.minutes * 60.0

    def progress(it, elapsed):
        fr = []
        if budget_s:
            fr.append(elapsed / budget_s)
        if args.max_iters:
            fr.append(it / args.max_iters)
        return max(fr)

    def lr_factor(it, elapsed):
        if args.lr_decay <= 0:
            return 1.0
        remaining = 1.0 - progress(it, elapsed)
        return max(0.0, min(1.0, remaining / args.lr_decay))

    stop = {"flag": False}

    def on_signal(signum, _frame):
        log("signal %d: stopping after this iteration" % signum)
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    keys = ["loss_D_A", "loss_G_A", "loss_cycle_A", "loss_idt_A",
            "loss_D_B", "loss_G_B", "loss_cycle_B", "loss_idt_B"]
    window = {k: 0.0 for k in keys}
    window_n = 0
    iter0, loop_t0 = state["iter"], time.time()
    start = time.time() - state["elapsed_s"]  # elapsed counts time before --resume
    window_t = time.time()
    last_ckpt = time.time()
    log_path = os.path.join(args.out, "loss_log.jsonl")
    lam_a, lam_b, lam_idt = args.lambda_A, args.lambda_B, args.lambda_identity
    G_A, G_B, D_A, D_B = (nets[n] for n in NET_NAMES)
    log("training: netG %s ngf %d ndf %d crop %d threads %d budget %s min, max iters %s, lr decay %s"
        % (args.netG, args.ngf, args.ndf, args.crop_size, args.threads, args.minutes, args.max_iters,
           args.lr_decay or "off"))

    def checkpoint(reason):
        state["elapsed_s"] = time.time() - start
        t = time.time()
        save_checkpoint(args.out, nets, opt_g, opt_d, state, sample_a, rngs)
        log("checkpoint (%s) at iter %d, %.1f min, saved in %.2fs"
            % (reason, state["iter"], state["elapsed_s"] / 60, time.time() - t))

    while True:
        elapsed = time.time() - start
        if stop["flag"]:
            reason = "signal"
            break
        if budget_s is not None and elapsed >= budget_s:
            reason = "time budget"
            break
        if args.max_iters is not None and state["iter"] >= args.max_iters:
            reason = "max iters"
            break

        lr = args.lr * lr_factor(state["iter"], elapsed)
        for opt in (opt_g, opt_d):
            for g in opt.param_groups:
                g["lr"] = lr

        real_A, real_B, new_epoch = data.next()
        if new_epoch:
            state["epoch"] += 1
        real_A, real_B = real_A.to(device), real_B.to(device)

        # forward
        fake_B = G_A(real_A)
        rec_A = G_B(fake_B)
        fake_A = G_B(real_B)
        rec_B = G_A(fake_A)

        # generators (Ds frozen)
        set_requires_grad([D_A, D_B], False)
        opt_g.zero_grad()
        if lam_idt > 0:
            idt_A = G_A(real_B)
            loss_idt_A = crit_l1(idt_A, real_B) * lam_b * lam_idt
            idt_B = G_B(real_A)
            loss_idt_B = crit_l1(idt_B, real_A) * lam_a * lam_idt
        else:
            loss_idt_A = loss_idt_B = torch.zeros((), device=device)
        loss_G_A = crit_gan(D_A(fake_B), True)
        loss_G_B = crit_gan(D_B(fake_A), True)
        loss_cycle_A = crit_l1(rec_A, real_A) * lam_a
        loss_cycle_B = crit_l1(rec_B, real_B) * lam_b
        loss_G = loss_G_A + loss_G_B + loss_cycle_A + loss_cycle_B + loss_idt_A + loss_idt_B
        loss_G.backward()
        opt_g.step()

        # discriminators
        set_requires_grad([D_A, D_B], True)
        opt_d.zero_grad()
        fb = pool_fake_b.query(fake_B)
        loss_D_A = 0.5 * (crit_gan(D_A(real_B), True) + crit_gan(D_A(fb.detach()), False))
        loss_D_A.backward()
        fa = pool_fake_a.query(fake_A)
        loss_D_B = 0.5 * (crit_gan(D_B(real_A), True) + crit_gan(D_B(fa.detach()), False))
        loss_D_B.backward()
        opt_d.step()

        state["iter"] += 1
        vals = (loss_D_A, loss_G_A, loss_cycle_A, loss_idt_A, loss_D_B, loss_G_B, loss_cycle_B, loss_idt_B)
        for k, v in zip(keys, vals):
            window[k] += float(v.detach())
        window_n += 1

        if state["iter"] % LOG_EVERY == 0:
            now = time.time()
            rec = {"iter": state["iter"], "epoch": state["epoch"], "elapsed_s": round(now - start, 2)}
            rec.update({k: round(window[k] / window_n, 5) for k in keys})
            rec["it_per_s"] = round(window_n / max(now - window_t, 1e-9), 4)
            rec["lr"] = lr
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            log("iter %d ep %d %.1fmin %.3f it/s lr %.2e | D_A %.3f G_A %.3f cyc_A %.3f idt_A %.3f | "
                "D_B %.3f G_B %.3f cyc_B %.3f idt_B %.3f"
                % (rec["iter"], rec["epoch"], rec["elapsed_s"] / 60, rec["it_per_s"], lr,
                   *(rec[k] for k in keys)))
            window = {k: 0.0 for k in keys}
            window_n, window_t = 0, now

        if time.time() - last_ckpt >= args.checkpoint_every_min * 60:
            checkpoint("periodic")
            last_ckpt = time.time()

    loop_s = time.time() - loop_t0
    n_run = state["iter"] - iter0
    checkpoint("final: " + reason)
    log("done: %d iterations (%d in this run, %.3f it/s, %.3f s/it), %.1f min total"
        % (state["iter"], n_run, n_run / max(loop_s, 1e-9), loop_s / max(n_run, 1),
           (time.time() - start) / 60))


if __name__ == "__main__":
    main()
