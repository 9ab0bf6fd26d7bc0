"""What the command-line entry points share in parsing."""

from __future__ import annotations

import argparse


def boolean_flag(text: str) -> bool:
    """PaddleNLP's boolean flags take a value (``--benchmark true``) or none (``--benchmark``)."""
    value = text.lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors (a wrong type, an unknown flag) are one
    ``error:`` line and exit code 2, without argparse's usage block first."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")
