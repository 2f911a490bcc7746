"""Read the digit in each image with the registered champion model (or any logged model).

    python predict.py digit.png                          # models:/mnist-mlp@champion from ./mlruns
    python predict.py photo.jpg scan.webp drawing.gif    # several at once: one line each
    python predict.py digit.png --save-input seen/       # also save the 28x28 image the model read
    python predict.py digit.png --model models:/mnist-mlp/3     # another version, or runs:/<run id>/model
    python predict.py digit.png --model compact          # an alias of mnist-mlp: models:/mnist-mlp@compact

Any size, colour or grey, dark ink on light paper or the reverse, a photo with uneven light:
each picture becomes a 28x28 image the way MNIST's were made (mlp/serve/images.py). The champion
comes from `python train.py model=best`. A file that cannot be read (not an image, truncated,
blank, too large, not a regular file) gets one line saying why; the others are still read; the
model is loaded once the files are read, and only if one of them was. The exit status is 1 if any
file failed, 2 for a setup error (no model, a --save-input folder that cannot be written).
Tracking store: $MLFLOW_TRACKING_URI, else this project's mlruns/mlflow.db.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mlp.cli import closed_pipe_quietly
from mlp.errors import UserError, check_writable_folder

if TYPE_CHECKING:
    import numpy as np


def read_images(names: list[str]) -> list[tuple[str, np.ndarray]]:
    """(name, its 28x28 pixels) for each file that can be read, in order; one line on stderr for each other."""
    from mlp.serve import images  # Pillow and SciPy: after the arguments are checked

    read = []
    for name in names:
        try:
            read.append((name, images.load_digit(name)))
        except UserError as e:
            print(f"{name}: error: {e}", file=sys.stderr)
    return read


def save_path(folder: str, name: str, saved: set[str]) -> Path:
    """Where the 28x28 image of ``name`` goes: inputs of one name from several folders (a/x.png b/x.png)
    each keep their own file."""
    label, n = Path(name).name, 1
    while label in saved:
        n += 1
        label = f"{Path(name).name}-{n}"
    saved.add(label)
    return Path(folder) / f"{label}.28x28.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Read the digit in each image.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, BMP, GIF, WebP, ... files")
    parser.add_argument("--model", default=None, help="model URI, or an alias: champion (default), compact")
    parser.add_argument("--save-input", metavar="DIR", help="save the 28x28 image read, as DIR/<name>.28x28.png")
    args = parser.parse_args(argv)

    try:
        if args.save_input:  # before any image is read: a folder that cannot be written is said at once
            check_writable_folder("--save-input", args.save_input)
        read = read_images(args.images)
        if read:  # torch and MLflow (seconds) only once there is an image to show the model
            from mlp.serve.recognizer import DEFAULT_URI, Recognizer, model_uri  # torch, MLflow

            recognizer = Recognizer(model_uri(args.model) if args.model else DEFAULT_URI)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from PIL import Image  # Pillow: once the arguments are checked

    failed, saved = len(args.images) - len(read), set()
    for name, pixels in read:
        probs = recognizer.predict(pixels[None])[0]
        first, second = probs.argsort()[::-1][:2]
        line = f"{name}: {first} ({probs[first]:.1%}), runner-up {second} ({probs[second]:.1%})"
        out = save_path(args.save_input, name, saved) if args.save_input else None
        if out is not None and out.name != f"{Path(name).name}.28x28.png":
            line += f"; its 28x28 input is saved as {out}"
        print(line)
        if out is not None:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(out)
            except OSError as e:  # e.g. the disk filled up meanwhile
                print(f"{name}: error: cannot save {out}: {e.strerror or e}", file=sys.stderr)
                failed += 1
    if failed:
        print(f"{failed} of {len(args.images)} file(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    with closed_pipe_quietly():
        sys.exit(main())
