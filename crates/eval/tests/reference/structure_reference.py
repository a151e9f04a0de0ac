#!/usr/bin/env python3
"""Reference for the structure metrics (crates/eval/src/structure.rs), NumPy + Pillow.

Writes synthetic test images (no dataset image) and the metrics of each (photo, translation)
pair to crates/eval/tests/golden/structure/. Regenerate with

    bench/.venv/bin/python crates/eval/tests/reference/structure_reference.py

Definition (issue 19): 256x256 grayscale versions (BT.601 luma, Pillow bicubic) of a photo and
its translation; Sobel magnitude g with gx = [1,2,1]^T (x) [-1,0,1] on interior pixels only;
edge correlation = Pearson correlation of g(photo) and g(translation); sharpness =
mean g(translation) / mean g(photo).
"""
import json
import os

import numpy as np
from PIL import Image, ImageFilter

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "golden", "structure")


def gray256(rgb8):
    x = rgb8.astype(np.float32) / 255.0
    y = (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]).astype(np.float32)
    img = Image.fromarray(y, mode="F").resize((256, 256), Image.BICUBIC)
    return np.asarray(img, dtype=np.float64)


def sobel(p):
    gx = (p[:-2, 2:] - p[:-2, :-2]) + 2 * (p[1:-1, 2:] - p[1:-1, :-2]) + (p[2:, 2:] - p[2:, :-2])
    gy = (p[2:, :-2] - p[:-2, :-2]) + 2 * (p[2:, 1:-1] - p[:-2, 1:-1]) + (p[2:, 2:] - p[:-2, 2:])
    return np.sqrt(gx * gx + gy * gy)


def metrics(a, b):
    ga, gb = sobel(gray256(a)).ravel(), sobel(gray256(b)).ravel()
    return float(np.corrcoef(ga, gb)[0, 1]), float(gb.mean() / ga.mean())


def scene(w, h, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3))
    img[..., 0] = xx / w
    img[..., 1] = yy / h
    img[..., 2] = 0.5
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, min(w, h) / 3)
        m = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img[m] = rng.uniform(0, 1, 3)
    img += rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = []
    for name, (w, h, seed) in {"wide": (210, 140, 1), "small": (96, 80, 2), "square": (160, 160, 3)}.items():
        photo = scene(w, h, seed)
        pim = Image.fromarray(photo)
        variants = {
            "blur": pim.filter(ImageFilter.GaussianBlur(2)),
            "grade": Image.fromarray((photo * 0.6 + 60).astype(np.uint8)),
            "other": Image.fromarray(scene(w, h, seed + 10)),
            "halfsize": pim.resize((w // 2, h // 2), Image.BILINEAR),
        }
        pim.save(os.path.join(OUT, f"{name}.png"))
        for v, vim in variants.items():
            fn = f"{name}_{v}.png"
            vim.save(os.path.join(OUT, fn))
            ec, sh = metrics(photo, np.asarray(vim.convert("RGB")))
            cases.append({"photo": f"{name}.png", "translation": fn,
                          "edge_correlation": ec, "sharpness": sh})
    with open(os.path.join(OUT, "metrics.json"), "w") as f:
        json.dump(cases, f, indent=1)
    print("\n".join(f"{c['translation']}: {c['edge_correlation']:.6f} {c['sharpness']:.6f}" for c in cases))


if __name__ == "__main__":
    main()
