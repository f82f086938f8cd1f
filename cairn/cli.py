"""`cairn`: the user CLI. Commands land with the features they drive."""

from __future__ import annotations

import argparse

from cairn import __version__


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cairn", description="Cairn user CLI")
    parser.add_argument("--version", action="version", version=f"cairn {__version__}")
    parser.parse_args(argv)
    parser.print_help()
