#!/usr/bin/env python3
"""PatchNCE reference for crates/train/tests/nce.rs: CUT's PatchSampleF + PatchNCELoss
(taesungp/contrastive-unpaired-translation, models/networks.py and models/patchnce.py),
restated here with the same formulas, on fixed random features, MLP weights and patch ids.

    bench/.venv/bin/python crates/train/tests/reference_nce.py

writes crates/train/tests/golden/nce.safetensors: the inputs, the loss of
calculate_NCE_loss (mean PatchNCE per layer x lambda, averaged over layers) and its gradients
with respect to the query features and the MLP weights. The keys are detached, as in the
reference (feat_k.detach()).
"""
import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
TAU = 0.07
LAMBDA = 10.0


def normalize(x):  # networks.Normalize(2)
    norm = x.pow(2).sum(1, keepdim=True).pow(1.0 / 2)
    return x.div(norm + 1e-7)


def sample(feats, ids, mlps):  # PatchSampleF.forward with given patch ids
    out = []
    for feat, pid, (w1, b1, w2, b2) in zip(feats, ids, mlps):
        x = feat.permute(0, 2, 3, 1).flatten(1, 2)
        x = x[:, pid, :].flatten(0, 1)
        x = torch.relu(x @ w1.t() + b1) @ w2.t() + b2
        out.append(normalize(x))
    return out


def patchnce(feat_q, feat_k, batch_size):  # PatchNCELoss.forward
    num_patches, dim = feat_q.shape
    feat_k = feat_k.detach()
    l_pos = torch.bmm(feat_q.view(num_patches, 1, -1), feat_k.view(num_patches, -1, 1)).view(num_patches, 1)
    feat_q = feat_q.view(batch_size, -1, dim)
    feat_k = feat_k.view(batch_size, -1, dim)
    npatches = feat_q.size(1)
    l_neg = torch.bmm(feat_q, feat_k.transpose(2, 1))
    diagonal = torch.eye(npatches, dtype=torch.bool)[None, :, :]
    l_neg.masked_fill_(diagonal, -10.0)
    l_neg = l_neg.view(-1, npatches)
    out = torch.cat((l_pos, l_neg), dim=1) / TAU
    return torch.nn.functional.cross_entropy(out, torch.zeros(out.size(0), dtype=torch.long), reduction="none")


def main():
    g = torch.Generator().manual_seed(0)
    batch, nc, patches = 2, 16, 12
    shapes = [(batch, 3, 9, 7), (batch, 8, 5, 6)]
    t = {}
    feats_q, feats_k, ids, mlps = [], [], [], []
    for i, s in enumerate(shapes):
        q = torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
        k = torch.randn(*s, generator=g, dtype=torch.float64)
        k = 0.7 * q.detach() + 0.3 * k  # keys resemble their queries, as in training
        pid = torch.randperm(s[2] * s[3], generator=g)[:patches]
        c = s[1]
        w1 = (0.5 * torch.randn(nc, c, generator=g, dtype=torch.float64)).requires_grad_()
        b1 = (0.1 * torch.randn(nc, generator=g, dtype=torch.float64)).requires_grad_()
        w2 = (0.5 * torch.randn(nc, nc, generator=g, dtype=torch.float64)).requires_grad_()
        b2 = (0.1 * torch.randn(nc, generator=g, dtype=torch.float64)).requires_grad_()
        feats_q.append(q), feats_k.append(k), ids.append(pid), mlps.append((w1, b1, w2, b2))
        t[f"q{i}"], t[f"k{i}"], t[f"ids{i}"] = q.detach(), k, pid.to(torch.int64)
        for n, p in zip(("w1", "b1", "w2", "b2"), (w1, b1, w2, b2)):
            t[f"mlp{i}.{n}"] = p.detach()
    fq = sample(feats_q, ids, mlps)
    fk = sample(feats_k, ids, mlps)
    total = 0.0
    per_patch = []
    for a, b in zip(fq, fk):
        l = patchnce(a, b, batch)
        per_patch.append(l)
        total = total + (l * LAMBDA).mean()
    loss = total / len(shapes)
    loss.backward()
    t["loss"] = loss.detach().reshape(1)
    for i in range(len(shapes)):
        t[f"per_patch{i}"] = per_patch[i].detach()
        t[f"grad_q{i}"] = feats_q[i].grad
        for n, p in zip(("w1", "b1", "w2", "b2"), mlps[i]):
            t[f"grad_mlp{i}.{n}"] = p.grad
    t = {k: v.contiguous() for k, v in t.items()}
    save_file(t, os.path.join(HERE, "golden", "nce.safetensors"))
    print("loss", loss.item())


if __name__ == "__main__":
    main()
