#!/usr/bin/env python
"""Rewrites docs/cli.md from bench's argparse parsers (``--check``: exit 1 if it is stale).

Run it after changing a flag or its help; tests/test_docs.py fails while the page is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli import build_parser  # noqa: E402
from bench.clidoc import render  # noqa: E402

PAGE = ROOT / "docs" / "cli.md"


def main() -> int:
    """Writes the page, or with --check says whether it is current."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 if stale")
    text = render(build_parser())
    if ap.parse_args().check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
        print(f"{PAGE}: {'current' if current == text else 'STALE'}")
        return 0 if current == text else 1
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
