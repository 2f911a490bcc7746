"""The recognizer: the champion loaded from the Model Registry, any image of one digit read
into MNIST's 28x28, and the web app (``python -m mlp.serve``) with its drawing page."""
