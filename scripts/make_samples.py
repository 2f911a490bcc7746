"""Make the sample pictures that the README's recognizer examples read (samples/): MNIST test
digits made to look like photos of ink on paper (mlp.serve.images.photo_like, a fixed seed), and
a text file that is no image. Run from the repository root; the files are committed, so this is
only needed to remake them:

    python scripts/make_samples.py
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mlp import PROJECT_ROOT
from mlp.run import data
from mlp.serve import images

SAMPLES = PROJECT_ROOT / "samples"
# (file, index in MNIST's test set, uneven light): a 7 and a 3 the shipped champion reads.
PICTURES = [("seven.jpg", 0, False), ("three.png", 18, True)]
LICENCE = """The pictures here are digits of the MNIST test set (Yann LeCun, Corinna Cortes and
Christopher J.C. Burges; licensed under CC BY-SA 3.0:
https://creativecommons.org/licenses/by-sa/3.0/), made to look like photos of ink on paper by
scripts/make_samples.py (mlp.serve.images.photo_like). They are shared under the same licence.
notes.txt is no image: the README shows how predict.py answers it.
"""


def main() -> None:
    _, _, test_x, test_y = data.read_mnist(PROJECT_ROOT / "data")
    SAMPLES.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name, index, uneven in PICTURES:
        jpeg = images.photo_like(test_x[index].numpy(), rng, uneven_light=uneven)
        picture = Image.open(io.BytesIO(jpeg))
        picture.save(SAMPLES / name, "PNG" if name.endswith(".png") else "JPEG", quality=85)
        print(f"{SAMPLES / name}: MNIST test digit {index}, a {int(test_y[index])}")
    (SAMPLES / "notes.txt").write_text("Not a picture: predict.py says so and reads the others.\n")
    (SAMPLES / "LICENCE.txt").write_text(LICENCE)


if __name__ == "__main__":
    main()
