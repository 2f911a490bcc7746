"""Sweeps: the search space read from conf/, the worker (ask -> launch -> tell), the job's side
of a trial, the protocol between them (``protocol``), reporting and winner files.

This file imports nothing, so that the run room can read ``mlp.sweep.protocol`` (a leaf of
constants) without loading the sweeper."""
