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
exit status is 1 if any file failed, 2 for a setup error (no model, a --save-input folder that
cannot be written). Tracking store: $MLFLOW_TRACKING_URI, else this project's mlruns/mlflow.db.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlp.cli import closed_pipe_quietly
from mlp.errors import UserError, check_writable_folder


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

    # torch, MLflow and Pillow after the arguments are read: --help and a usage error answer at once.
    from PIL import Image

    from mlp.serve import images
    from mlp.serve.recognizer import DEFAULT_URI, Recognizer, model_uri

    try:
        if args.save_input:  # before any image is read: a folder that cannot be written is said at once
            check_writable_folder("--save-input", args.save_input)
        recognizer = Recognizer(model_uri(args.model) if args.model else DEFAULT_URI)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed, saved = 0, set()
    for name in args.images:
        try:
            pixels = images.load_digit(name)
        except UserError as e:
            print(f"{name}: error: {e}", file=sys.stderr)
            failed += 1
            continue
        probs = recognizer.predict(pixels[None])[0]
        first, second = probs.argsort()[::-1][:2]
        line = f"{name}: {first} ({probs[first]:.1%}), runner-up {second} ({probs[second]:.1%})"
        if args.save_input:
            # Inputs of one name from several folders (a/x.png b/x.png) each keep their own file.
            label, n = Path(name).name, 1
            while label in saved:
                n += 1
                label = f"{Path(name).name}-{n}"
            saved.add(label)
            out = Path(args.save_input) / f"{label}.28x28.png"
            if n > 1:
                line += f"; its 28x28 input is saved as {out}"
        print(line)
        if args.save_input:
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
