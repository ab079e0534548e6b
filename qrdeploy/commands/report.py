"""`qrdeploy report`: markdown and CSV tables (and eps-curve PNGs) of results JSON files."""

from __future__ import annotations

import argparse

from qrdeploy.report.render import Format, write_report

HELP = "report of results JSON files: markdown + CSV tables with intervals, eps-curve plots"
#: options that are files this command writes (checked before it runs)
OUTPUT_FILES = ("output",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="results JSON files of qrdeploy attack")
    p.add_argument("-o", "--output", default="report.md",
                   help="markdown file; the CSV and PNGs go beside it (default: %(default)s)")
    p.add_argument("--no-plots", action="store_true",
                   help="leave out the eps-curve PNGs (no matplotlib needed)")
    p.add_argument("--format", choices=[f.value for f in Format], default=Format.MARKDOWN.value,
                   help="markdown: report.md + CSV + PNGs; github: one file to paste as a "
                        "pull-request comment (summary first, details collapsed, under 65,000 "
                        "characters, no CSV or plots) (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    files = write_report(args.results, args.output, plots=not args.no_plots, fmt=args.format)
    print(f"report: {files.markdown}")  # the answer, also with --quiet
    if not args.quiet and files.csv is not None:
        print(f"table: {files.csv}")
        for p in files.plots:
            print(f"plot: {p}")
        if files.plot_note:
            print(files.plot_note)
    return 0
