"""The ``stmodels`` command line."""

from __future__ import annotations

import argparse

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stmodels", description="Spatio-temporal prediction models and kernels.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="backends per device and the extension's build metadata")
    args = parser.parse_args(argv)
    if args.command == "info":
        from stmodels.info import main as info_main

        info_main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
