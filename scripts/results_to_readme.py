"""The README's results table from one ``recon eval`` results.json, so that it is regenerated, never edited.

Usage::

    python scripts/results_to_readme.py out/eval/results.json                     # print the table
    python scripts/results_to_readme.py out/eval/results.json --write README.md   # replace it in place

With ``--write`` the table between the marker lines ``<!-- results-table:start -->`` and
``<!-- results-table:end -->`` is replaced (the markers stay); the file must hold each marker once.
The columns are :data:`recon.eval.report.README_COLUMNS`; the mean row and its note are those of
``results.md`` (failed scenes counted, "(k of n)" beside a mean over fewer scenes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recon.errors import ReconError
from recon.eval.report import README_COLUMNS, markdown_table, mean_row
from recon.io.atomic import atomic_write_text

START = "<!-- results-table:start -->"
END = "<!-- results-table:end -->"


def readme_table(results: dict) -> str:
    """The markdown table (and its note on means) of a results.json's content."""
    rows = results.get("scenes")
    if not isinstance(rows, list):
        raise ReconError("results.json has no 'scenes' list; is it the output of recon eval?")
    # Recomputed, so that a results.json written before the mean counted failed scenes reads the same.
    return markdown_table(rows, mean_row(rows), README_COLUMNS)


def replace_between_markers(text: str, table: str) -> str:
    """``text`` with everything between the :data:`START` and :data:`END` lines replaced by ``table``."""
    return replace_block(text, table, START, END)


def replace_block(text: str, block: str, start: str, end: str) -> str:
    """``text`` with everything between the marker lines ``start`` and ``end`` replaced by ``block`` (also
    used by ``bench_pipeline.py --write``)."""
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ReconError(f"expected one '{start}' line followed by one '{end}' line")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{block.rstrip()}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, help="results.json written by recon eval")
    ap.add_argument("--write", type=Path, default=None, metavar="README",
                    help="replace the table between the marker comments in this file instead of printing")
    args = ap.parse_args(argv)
    try:
        try:
            results = json.loads(args.results.read_text())
        except (OSError, ValueError) as e:
            raise ReconError(f"cannot read {args.results}: {e}") from None
        table = readme_table(results)
        if args.write is None:
            print(table, end="")
            return 0
        try:
            text = args.write.read_text()
        except OSError as e:
            raise ReconError(f"cannot read {args.write}: {e}") from None
        try:
            new = replace_between_markers(text, table)
        except ReconError as e:
            raise ReconError(f"{args.write}: {e}") from None
        atomic_write_text(args.write, new)
        print(f"results_to_readme: table of {len(results['scenes'])} scenes written to {args.write}")
        return 0
    except ReconError as e:
        print(f"results_to_readme: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
