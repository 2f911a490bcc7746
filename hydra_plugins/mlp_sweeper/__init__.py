"""Hydra discovers sweepers in the ``hydra_plugins`` namespace; this one is the project's."""
