"""``python -m mlp.serve``: the recognizer's web app (see mlp/serve/app.py)."""

import sys

from mlp.serve.app import main

sys.exit(main())
