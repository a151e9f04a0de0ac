#!/usr/bin/env python3
"""Training / validation split of the shared datasets, as folders of symlinks.

The rule is bench/reference_cyclegan.py's: the last 10% of each folder, sorted by
file name (at least one image), is held out. Writing the split as folders lets
`atelier train`, the reference trainer and `atelier eval report` use exactly the
same images without copying any (the datasets are research-use only: keep OUT
outside the repository).

    python bench/split_datasets.py --datasets ../shared/datasets --out /work/split \
        photo monet ukiyoe cezanne vangogh

gives OUT/photo/train, OUT/photo/val, OUT/monet/train, ... and OUT/split.json.
"""

import argparse
import glob
import json
import os

HELD_OUT_FRACTION = 0.1
IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


def split(files):
    n_hold = max(1, int(len(files) * HELD_OUT_FRACTION))
    if len(files) - n_hold < 1:
        raise SystemExit("need at least 2 images per folder")
    return files[:-n_hold], files[-n_hold:]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", required=True, help="folder holding one folder per domain")
    p.add_argument("--out", required=True, help="where DOMAIN/train and DOMAIN/val are made")
    p.add_argument("domains", nargs="+")
    args = p.parse_args()
    summary = {"rule": "last 10% of each folder, sorted by name, is held out (val)"}
    for d in args.domains:
        src = os.path.abspath(os.path.join(args.datasets, d))
        files = sorted(f for f in glob.glob(os.path.join(src, "*"))
                       if os.path.isfile(f) and f.lower().endswith(IMG_EXTS))
        if not files:
            raise SystemExit("no images in %s" % src)
        parts = dict(zip(("train", "val"), split(files)))
        for part, chosen in parts.items():
            dst = os.path.join(args.out, d, part)
            os.makedirs(dst, exist_ok=True)
            for old in os.listdir(dst):
                os.remove(os.path.join(dst, old))
            for f in chosen:
                os.symlink(f, os.path.join(dst, os.path.basename(f)))
        summary[d] = {k: [os.path.basename(f) for f in v] for k, v in parts.items()}
        print("%s: %d train, %d val" % (d, len(parts["train"]), len(parts["val"])))
    with open(os.path.join(args.out, "split.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
