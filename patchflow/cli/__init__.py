"""The ``patchflow`` command: ``demo``, ``apply``, ``resume``, ``inspect`` and ``grid``.

A thin veneer: argument parsing and commands (:mod:`.commands`) call the public API and
word every error in command-line terms (``--size``, not ``size=``); :mod:`.opspec` turns
``--op``/``--op-arg``, ``--pipeline`` files and ``--model`` into operators.
"""

from __future__ import annotations

from patchflow.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
