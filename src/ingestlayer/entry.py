"""The ``ingestlayer`` command's entry point.

Importing the command line (typer, rich, the store's modules) takes a noticeable moment; a
Ctrl-C then would print a traceback out of the middle of an import. Here it ends the command
as a Ctrl-C does at any other time: "error: aborted", exit status 130.
"""

from __future__ import annotations

import sys

ABORTED_EXIT = 130


def main() -> None:
    try:
        from ingestlayer.cli import main as run
    except KeyboardInterrupt:
        print("error: aborted", file=sys.stderr)
        sys.exit(ABORTED_EXIT)
    run()
