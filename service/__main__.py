"""`python -m service`: the server (flags alone, or `serve`) and the client subcommands (service/cli.py)."""

from __future__ import annotations

import sys

from service.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
