#!/usr/bin/env python3
"""Writes tests/golden/metrics.json: FID and KID of small random feature sets computed by
the reference implementations themselves, pytorch-fid 0.3.0 (`calculate_frechet_distance`)
and torch-fidelity 0.4.0 (`kid_features_to_metric`), for crates/eval/tests/metrics.rs.

    pip install pytorch-fid==0.3.0 torch-fidelity==0.4.0 scipy   # e.g. into bench/.venv
    python crates/eval/tests/reference/metrics_reference.py

KID cases use subsets of the whole set (equal sizes), so every subset is a permutation and
the value does not depend on the random subset draws (which differ between the two
implementations).
"""
import json
import os

import numpy as np
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from torch_fidelity.metric_kid import kid_features_to_metric

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "golden", "metrics.json")


def feats(rng, n, d, shift, scale):
    # Non-negative like post-ReLU pool features, with some correlation between dimensions.
    base = rng.standard_normal((n, d)) * scale + shift
    mix = rng.standard_normal((d, d)) * 0.3 + np.eye(d)
    return np.abs(base @ mix).astype(np.float32)


def fid_of(a, b):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(calculate_frechet_distance(
        a64.mean(0), np.cov(a64, rowvar=False), b64.mean(0), np.cov(b64, rowvar=False)))


def main():
    rng = np.random.RandomState(20261202)
    cases = []
    for name, (n1, n2, d) in {
        "more_images_than_dims": (40, 30, 16),
        "fewer_images_than_dims": (20, 25, 64),
    }.items():
        a = feats(rng, n1, d, 0.5, 1.0)
        b = feats(rng, n2, d, 0.8, 1.3)
        cases.append({"name": name, "dim": d, "a": a.ravel().tolist(), "b": b.ravel().tolist(),
                      "fid": fid_of(a, b), "fid_self": fid_of(a, a)})
    kids = []
    for name, (n, d, shift) in {"kid_same_distribution": (30, 16, 0.5),
                                "kid_shifted": (30, 16, 1.5)}.items():
        a = feats(rng, n, d, 0.5, 1.0)
        b = feats(rng, n, d, shift, 1.0)
        k = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=3,
                                   kid_subset_size=n, verbose=False)
        kids.append({"name": name, "dim": d, "a": a.ravel().tolist(), "b": b.ravel().tolist(),
                     "kid_mean": k["kernel_inception_distance_mean"],
                     "kid_std": k["kernel_inception_distance_std"]})
    with open(OUT, "w") as f:
        json.dump({"generated_by": "crates/eval/tests/reference/metrics_reference.py "
                   "(pytorch-fid 0.3.0, torch-fidelity 0.4.0)", "fid": cases, "kid": kids}, f)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
