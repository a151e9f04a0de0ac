#!/usr/bin/env python3
"""Generate Atelier's golden test files (tests/golden/).

For every case: build the reference network (refnets.py) with a fixed seed,
initialise it like pytorch-CycleGAN-and-pix2pix ``init_weights(net, 'normal',
0.02)``, then perturb every bias and the BatchNorm running statistics so that
every stored tensor influences the output, and write

  <case>.pth             torch.save(net.state_dict())  (default zip format)
  <case>.safetensors     same state dict (only for cases marked safetensors)
  <case>.io.safetensors  float32 ``input``, ``output`` (eval mode, no_grad) and,
                         for nets with BatchNorm, ``output_batchstats``
                         (train mode with every Dropout p=0, i.e. BatchNorm
                         normalising with the batch statistics, as the
                         reference test.py does without --eval); a case
                         with ``input_from`` stores no ``input`` and uses
                         that of the named case
  manifest.json          list of case descriptions (see README.md)

Afterwards every case is verified by reloading the files into a fresh model.

Usage: python make_golden.py [--out DIR] [--only SUBSTR] [--verify-only] [--sensitivity]
"""

import argparse
import copy
import json
import os
import sys
import zlib

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import refnets  # noqa: E402

from safetensors.torch import load_file, save_file  # noqa: E402

DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "golden"))

# ---------------------------------------------------------------------------
# case table
# ---------------------------------------------------------------------------
#
# Kept small (~10 MB committed). Each of resnet_6blocks, resnet_9blocks,
# unet_128, unet_256, basic, n_layers, pixel has exactly two cases that
# together cover both norms (instance, batch) and two widths, as
# crates/nets/tests/golden.rs requires; along the way they cover the dropout
# key shift, input_nc 1/3/6, non-square inputs and the safetensors import path
# (one G, one D). The "brief" nets use width 16 (the tutorial's 64 would make
# the generator's dense layer alone 100 x 7*7*256 floats, ~5 MB).

CASES = []


def _add(kind, case, arch, *, norm, input_shape, input_nc=3, output_nc=3, use_dropout=False,
         safetensors=False, ngf=None, ndf=None, n_layers=None, **extra):
    entry = {
        "case": case,
        "kind": kind,
        "arch": arch,
    }
    if kind == "G":
        entry["ngf"] = ngf
    else:
        entry["ndf"] = ndf
        entry["n_layers"] = n_layers
    entry.update({
        "norm": norm,
        "use_dropout": use_dropout,
        "input_nc": input_nc,
        "output_nc": output_nc,
        "input_shape": list(input_shape),
        "has_batchstats": norm == "batch",
        "safetensors": safetensors,
    })
    entry.update(extra)
    CASES.append(entry)


def _resnet(arch, norm, ngf, input_nc=3, use_dropout=False, safetensors=False):
    # 2 x C x 48 x 32: non-square on purpose
    name = "G_%s_%s_ngf%d" % (arch, norm, ngf) + ("_in%d" % input_nc if input_nc != 3 else "") \
        + ("_dropout" if use_dropout else "")
    _add("G", name, arch, ngf=ngf, norm=norm, input_nc=input_nc, use_dropout=use_dropout,
         input_shape=(2, input_nc, 48, 32), safetensors=safetensors)


def _unet(arch, norm, ngf, input_nc=3, output_nc=3, use_dropout=False, **extra):
    hw = int(arch.split("_")[1])
    name = "G_%s_%s_ngf%d" % (arch, norm, ngf) + ("_in%d" % input_nc if input_nc != 3 else "") \
        + ("_out%d" % output_nc if output_nc != 3 else "") + ("_dropout" if use_dropout else "")
    _add("G", name, arch, ngf=ngf, norm=norm, input_nc=input_nc, output_nc=output_nc,
         use_dropout=use_dropout, input_shape=(1, input_nc, hw, hw), **extra)


def _patchgan(arch, n_layers, norm, ndf, input_nc, safetensors=False):
    # input_nc 6 = pix2pix (A|B concatenated), 3 = CycleGAN
    # 70x70 (the receptive field of "basic"); n_layers 4 needs 96x96 for a >= 2x2 output
    hw = 16 if arch == "pixel" else 96 if n_layers >= 4 else 70
    tag = "n_layers%d" % n_layers if arch == "n_layers" else arch
    _add("D", "D_%s_%s_ndf%d_in%d" % (tag, norm, ndf, input_nc), arch, ndf=ndf, n_layers=n_layers,
         norm=norm, input_nc=input_nc, output_nc=1, input_shape=(2, input_nc, hw, hw),
         safetensors=safetensors)


def _define_cases():
    # --- ResNet generators ----------------------------------------------------
    # dropout shifts the second conv of every block: conv_block.6 instead of .5
    _resnet("resnet_6blocks", "instance", 4)
    _resnet("resnet_6blocks", "batch", 8, use_dropout=True)
    _resnet("resnet_9blocks", "instance", 8, input_nc=1)
    _resnet("resnet_9blocks", "batch", 4, safetensors=True)
    # Atelier's resize-convolution variant (no checkerboard): Upsample + ReflectionPad + Conv
    # move the head to model.27 for 6 blocks.
    _resnet("resnet_6blocks_resize", "instance", 4)

    # --- U-Net generators -------------------------------------------------------
    _unet("unet_128", "batch", 2)
    _unet("unet_128", "instance", 3, use_dropout=True)
    # unet_256 tensors are 1 x C x 256 x 256 (0.26 MB per channel): single-channel
    # in and out, and the second case reuses the first one's input (input_from)
    _unet("unet_256", "instance", 2, input_nc=1, output_nc=1)
    _unet("unet_256", "batch", 3, input_nc=1, output_nc=1, input_from="G_unet_256_instance_ngf2_in1_out1")

    # --- PatchGAN discriminators ------------------------------------------------
    _patchgan("basic", 3, "instance", 4, 3)
    _patchgan("basic", 3, "batch", 8, 6, safetensors=True)
    _patchgan("n_layers", 2, "instance", 8, 6)
    _patchgan("n_layers", 4, "batch", 4, 3)
    _patchgan("pixel", None, "instance", 4, 6)
    _patchgan("pixel", None, "batch", 8, 3)

    # --- DCGAN (pytorch/examples, 64x64) ------------------------------------------
    _add("G", "G_dcgan64", "dcgan64_G", ngf=4, norm="batch", input_nc=100, output_nc=3,
         input_shape=(2, 100, 1, 1), nz=100)
    _add("D", "D_dcgan64", "dcgan64_D", ndf=4, norm="batch", input_nc=3, output_nc=1,
         input_shape=(2, 3, 64, 64))

    # --- "brief" DCGAN (Keras TF tutorial, translated), width 16 -------------------
    # G: dense 100 -> 7*7*64, convT 64 -> 32 -> 16 -> 3; D: conv 3 -> 16 -> 32, fc 32*8*8 -> 1
    _add("G", "G_brief_w16", "brief_G", ngf=16, norm="batch", input_nc=100, output_nc=3,
         input_shape=(2, 100), nz=100, width=16)
    _add("D", "D_brief_w16", "brief_D", ndf=16, norm="none", input_nc=3, output_nc=1,
         input_shape=(2, 3, 32, 32), size=32, width=16)

    # --- Atelier LightGenerator ----------------------------------------------------
    for ngf, n_blocks in ((8, 2), (16, 6)):
        _add("G", "G_light_ngf%d_b%d" % (ngf, n_blocks), "light", ngf=ngf, norm="instance",
             input_shape=(2, 3, 48, 32), n_blocks=n_blocks)


_define_cases()

_BY_NAME = {c["case"]: c for c in CASES}
assert len(_BY_NAME) == len(CASES), "duplicate case names"
for _i, _c in enumerate(CASES):
    if "input_from" in _c:
        _src = _BY_NAME[_c["input_from"]]
        assert CASES.index(_src) < _i and "input_from" not in _src, _c["case"]
        assert _src["input_shape"] == _c["input_shape"], _c["case"]


# ---------------------------------------------------------------------------
# building / running
# ---------------------------------------------------------------------------

def build_net(c):
    kw = dict(input_nc=c["input_nc"], output_nc=c["output_nc"], norm=c["norm"], use_dropout=c["use_dropout"])
    if c.get("ngf") is not None:
        kw["ngf"] = c["ngf"]
    if c.get("ndf") is not None:
        kw["ndf"] = c["ndf"]
    for k in ("n_layers", "n_blocks", "nz", "width", "size"):
        if c.get(k) is not None:
            kw[k] = c[k]
    return refnets.build(c["arch"], **kw)


def case_seed(name):
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def run_eval(net, x):
    net.eval()
    with torch.no_grad():
        return net(x.clone()).contiguous()


def run_batchstats(net, x):
    """train() mode (BatchNorm uses batch statistics) with all dropout off.
    Runs on a deep copy so the running statistics of ``net`` stay untouched."""
    net = copy.deepcopy(net)
    net.train()
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
    with torch.no_grad():
        return net(x.clone()).contiguous()


def has_batchnorm(net):
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def make_case(c):
    """Deterministically build the initialised network and the input of a case."""
    torch.manual_seed(case_seed(c["case"]))
    net = build_net(c)
    refnets.init_weights(net, "normal", 0.02)
    x = (torch.rand(*c["input_shape"]) * 2 - 1).float().contiguous()
    if "input_from" in c:
        x = make_case(_BY_NAME[c["input_from"]])[1]  # (the RNG draw above keeps the rest unchanged)
    # BatchNorm running stats are calibrated on a separate random batch
    shape = list(c["input_shape"])
    shape[0] = max(shape[0], 4)
    calib = torch.rand(*shape) * 2 - 1
    refnets.perturb_for_golden(net, calib)
    net.eval()
    return net, x


def generate(c, out_dir):
    name = c["case"]
    net, x = make_case(c)
    assert has_batchnorm(net) == c["has_batchstats"], name

    sd = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    torch.save(net.state_dict(), os.path.join(out_dir, name + ".pth"))
    if c["safetensors"]:
        save_file(sd, os.path.join(out_dir, name + ".safetensors"))

    io = {"input": x, "output": run_eval(net, x)}
    if c["has_batchstats"]:
        io["output_batchstats"] = run_batchstats(net, x)
        # sanity: the running stats must not have been touched
        for k, v in net.state_dict().items():
            assert torch.equal(v, sd[k]), (name, k)
    if "input_from" in c:
        del io["input"]  # stored once, in <input_from>.io.safetensors
    save_file(io, os.path.join(out_dir, name + ".io.safetensors"),
              metadata={"case": name})  # one key: HashMap order would make the header nondeterministic
    return io


def verify(c, out_dir):
    """Reload the written files into a fresh (differently initialised) model
    and check that it reproduces the stored outputs."""
    name = c["case"]
    torch.manual_seed(12345)
    net = build_net(c)
    sd = torch.load(os.path.join(out_dir, name + ".pth"), weights_only=True, map_location="cpu")
    net.load_state_dict(sd, strict=True)
    io = load_file(os.path.join(out_dir, name + ".io.safetensors"))
    expected = {"output"} | ({"output_batchstats"} if c["has_batchstats"] else set())
    if "input_from" in c:
        assert set(io) == expected, (name, sorted(io))
        io["input"] = load_file(os.path.join(out_dir, c["input_from"] + ".io.safetensors"))["input"]
    else:
        assert set(io) == expected | {"input"}, (name, sorted(io))
    for k, v in io.items():
        assert v.dtype == torch.float32, (name, k, v.dtype)
    assert list(io["input"].shape) == c["input_shape"], name
    err = (run_eval(net, io["input"]) - io["output"]).abs().max().item()
    assert err == 0.0, (name, "eval", err)
    if c["has_batchstats"]:
        err = (run_batchstats(net, io["input"]) - io["output_batchstats"]).abs().max().item()
        assert err == 0.0, (name, "batchstats", err)
        d = (io["output_batchstats"] - io["output"]).abs().max().item()
        assert d > 1e-3, (name, "batchstats output indistinguishable from eval output", d)
    if c["safetensors"]:
        st = load_file(os.path.join(out_dir, name + ".safetensors"))
        assert set(st) == set(sd), name
        for k in sd:
            assert torch.equal(st[k], sd[k]), (name, k)
    # the output must be non-trivial
    o = io["output"]
    assert torch.isfinite(o).all() and o.std().item() > 1e-3, (name, o.std().item())
    # how far float32 is from a float64 evaluation of the same net: a rough
    # measure of the rounding noise an independent implementation will see
    net64 = copy.deepcopy(net).double()
    f64 = {"output": run_eval(net64, io["input"].double())}
    if c["has_batchstats"]:
        f64["output_batchstats"] = run_batchstats(net64, io["input"].double())
    dev = max((f64[k].double() - io[k].double()).abs().max().item() for k in f64)
    return sd, io, dev


def sensitivity(c, threshold=1e-3):
    """For every float tensor of the state dict, rotate its values by one and report
    the max abs change of the eval output. Tensors below ``threshold`` would not
    be caught by a 1e-4 comparison if the Rust side mishandled them. Expected
    exceptions: conv biases directly followed by InstanceNorm (the per-channel
    mean subtraction cancels them exactly)."""
    net, x = make_case(c)
    y = run_eval(net, x)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    res = []
    for k, v in sd.items():
        if not v.is_floating_point():
            continue
        if v.numel() > 1:
            p = torch.roll(v.flatten(), 1).view_as(v)  # a shuffle that is never the identity
        else:
            p = v * 1.5 + 0.1
        net.load_state_dict({**sd, k: p})
        res.append(((run_eval(net, x) - y).abs().max().item(), k))
    net.load_state_dict(sd)
    weak = sorted(r for r in res if r[0] < threshold)
    return min(res)[0], weak


def structural_checks():
    """Key layouts that must match real pytorch-CycleGAN-and-pix2pix checkpoints."""
    norm = refnets.get_norm_layer("instance")
    keys = list(refnets.ResnetGenerator(3, 3, 8, norm, n_blocks=9).state_dict())
    assert keys[:2] == ["model.1.weight", "model.1.bias"], keys[:2]
    assert "model.10.conv_block.1.weight" in keys and "model.10.conv_block.5.weight" in keys
    assert keys[-2:] == ["model.26.weight", "model.26.bias"], keys[-4:]
    keys = list(refnets.ResnetGenerator(3, 3, 8, norm, use_dropout=True, n_blocks=6).state_dict())
    assert "model.10.conv_block.6.weight" in keys and "model.10.conv_block.5.weight" not in keys
    assert keys[-2:] == ["model.23.weight", "model.23.bias"], keys[-4:]
    keys = list(refnets.UnetGenerator(3, 3, 8, 8, refnets.get_norm_layer("batch")).state_dict())
    assert keys[0] == "model.model.0.weight" and keys[-1] == "model.model.3.bias", (keys[0], keys[-1])
    assert "model.model.1.model.3.model.3.model.3.model.3.model.3.model.3.model.1.weight" in keys  # innermost downconv
    keys = list(refnets.NLayerDiscriminator(6, 8, 3, refnets.get_norm_layer("batch")).state_dict())
    assert keys[-2:] == ["model.11.weight", "model.11.bias"], keys[-4:]
    sd = refnets.BriefGenerator().state_dict()  # default width 64 = the tutorial: 7*7*256, 256/128/64
    assert list(sd["fc.weight"].shape) == [7 * 7 * 256, 100] and list(sd["bn0.running_var"].shape) == [7 * 7 * 256]
    assert list(sd["up1.weight"].shape) == [256, 128, 5, 5] and list(sd["up2.weight"].shape) == [128, 64, 5, 5]
    assert list(sd["up3.weight"].shape) == [64, 3, 5, 5], {k: list(v.shape) for k, v in sd.items()}
    sd = refnets.BriefDiscriminator(3, 28).state_dict()  # tutorial: 64/128 filters, 28x28 input
    assert list(sd["conv1.weight"].shape) == [64, 3, 5, 5] and list(sd["conv2.weight"].shape) == [128, 64, 5, 5]
    assert list(sd["fc.weight"].shape) == [1, 128 * 7 * 7], {k: list(v.shape) for k, v in sd.items()}
    keys = list(refnets.LightGenerator(3, 3, 8, 2).state_dict())
    assert keys[0] == "stem.weight" and keys[-1] == "head.bias" and "blocks.1.pw2.bias" in keys \
        and "up.1.dw.weight" in keys and "down.1.weight" in keys, keys


def _total_size(d):
    return sum(os.path.getsize(os.path.join(d, fn)) for fn in os.listdir(d))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: tests/golden)")
    ap.add_argument("--only", default=None,
                    help="only cases whose name contains this substring (manifest.json is then left alone)")
    ap.add_argument("--verify-only", action="store_true",
                    help="write nothing, verify the cases listed in OUT/manifest.json")
    ap.add_argument("--sensitivity", action="store_true",
                    help="write nothing, report per case the stored tensors whose rotation changes "
                         "the output by < 1e-3")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    structural_checks()

    if args.verify_only:
        with open(os.path.join(args.out, "manifest.json")) as f:
            selected = json.load(f)
    else:
        selected = CASES
    cases = [c for c in selected if args.only is None or args.only in c["case"]]
    if not cases:
        sys.exit("no case matches")

    if args.sensitivity:
        for c in cases:
            _, weak = sensitivity(c)
            print("%-40s weak: %s" % (c["case"], ", ".join("%s=%.1e" % (k, d) for d, k in weak) or "-"))
        return

    os.makedirs(args.out, exist_ok=True)
    for c in cases:
        if not args.verify_only:
            generate(c, args.out)
        sd, io, dev = verify(c, args.out)
        shapes = {k: list(v.shape) for k, v in io.items() if k != "input"}
        print("%-40s %3d tensors  |f32-f64| %.1e  in %-18s out %s"
              % (c["case"], len(sd), dev, c["input_shape"], shapes), file=sys.stderr)

    if not args.verify_only and args.only is None:
        with open(os.path.join(args.out, "manifest.json"), "w") as f:
            f.write("[\n" + ",\n".join(json.dumps(c) for c in cases) + "\n]\n")  # one case per line
        # drop files of cases that are no longer generated
        keep = {c["case"] for c in cases}
        for fn in sorted(os.listdir(args.out)):
            for suffix in (".io.safetensors", ".safetensors", ".pth"):
                if fn.endswith(suffix):
                    if fn[: -len(suffix)] not in keep:
                        print("removing stale %s" % fn, file=sys.stderr)
                        os.remove(os.path.join(args.out, fn))
                    break

    total = _total_size(args.out)
    print("%d cases verified; total size of %s: %d bytes (%.2f MB)"
          % (len(cases), os.path.relpath(args.out), total, total / 1e6))


if __name__ == "__main__":
    main()
