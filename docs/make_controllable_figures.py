"""The digits figures of docs/controllable.md, made with the command line from a class-conditional digits run:

    scorelab train digits --set model.num_classes=10 --set train.steps=3000 --set train.warmup=300 --out RUN
    python docs/make_controllable_figures.py RUN [--out docs]

1. ``scorelab sample RUN --class all -n 8 --guidance G``: 8 samples of each class, one row per class
   (digits_classes.png, guidance 1 = the conditional model; digits_classes_g3.png, guidance 3);
2. ``scorelab inpaint RUN --input x.npy --mask mask.npy``: 8 test digits with their lower half unknown, completed
   by the default consistent method with the run's unconditional score (its null class); the figure shows the
   masked inputs (unknown pixels grey), the completions and the originals, one row each (digits_inpaint.png).

The CLI writes .npy files in data units (0..16); they are tiled here at 4x size with ``plots.save_image_grid``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def cli(*args) -> None:
    cmd = [sys.executable, "-m", "scorelab.cli", *map(str, args)]
    print("$ scorelab " + " ".join(map(str, args)), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    from scorelab import plots
    from scorelab.data import digits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for g, name in ((1, "digits_classes.png"), (3, "digits_classes_g3.png")):
            cli("sample", args.run, "--class", "all", "-n", 8, "--guidance", g, "--nfe", 100, "--seed", 0,
                "--device", "cpu", "--quiet", "--out", tmp / "classes.npy")
            x = np.load(tmp / "classes.npy")
            plots.save_image_grid(x, out / name, nrow=8, value_range=(0, 16), upscale=4)
        test = digits("test")
        pick = np.array([int(np.flatnonzero(test.y.numpy() == k)[0]) for k in range(8)])
        x = test.x.numpy()[pick]
        mask = np.ones((1, 8, 8), dtype=np.float32)
        mask[:, 4:] = 0  # the lower half is unknown
        np.save(tmp / "x.npy", np.where(mask > 0, x, np.nan).astype(np.float32))
        np.save(tmp / "mask.npy", mask)
        cli("inpaint", args.run, "--input", tmp / "x.npy", "--mask", tmp / "mask.npy", "--out", tmp / "filled.npy",
            "--nfe", 200, "--particles", 64, "--seed", 0, "--device", "cpu")
        filled = np.load(tmp / "filled.npy")
        shown = np.where(mask > 0, x, 8.0)  # unknown pixels as mid-grey
        plots.save_image_grid(np.concatenate([shown, filled, x]), out / "digits_inpaint.png", nrow=8,
                              value_range=(0, 16), upscale=4)
    print(f"wrote {out / 'digits_classes.png'}, {out / 'digits_classes_g3.png'}, {out / 'digits_inpaint.png'}")


if __name__ == "__main__":
    main()
