"""Command line: ``python -m patchflow demo`` (or the ``patchflow`` script)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``patchflow`` command."""
    parser = argparse.ArgumentParser(
        prog="patchflow", description="grid -> process -> stitch for rasters larger than memory"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run DN -> NDVI on a synthetic scene and verify it")
    demo.add_argument("--size", type=int, default=2048, help="scene edge in pixels (2048)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from patchflow.demo import run_demo

        if args.size < 1:
            parser.error("--size must be positive")
        result = run_demo(args.size)
        print(result.summary())
        return 0 if result.max_error <= 1e-6 else 1
    return 2  # pragma: no cover - argparse enforces the subcommand


if __name__ == "__main__":
    sys.exit(main())
