"""The `chatsieve` command: `prepare` runs the job, `sample` writes the built-in sample data."""

from __future__ import annotations

import argparse
import difflib
import logging
import sys

from jobs.config import add_prepare_arguments, config_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatsieve",
        description="Turn raw chat conversations into a clean, deduplicated, chat-templated fine-tuning dataset.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser(
        "prepare",
        help="read, normalize, tokenize, filter and write a dataset",
        description="Read conversations, normalize them, render the chat template, count tokens, drop "
        "over-long rows and write chat-templated Parquet shards with an audit of every removed row.",
    )
    add_prepare_arguments(prepare)

    rethreshold = commands.add_parser(
        "rethreshold",
        help="re-derive an output for another near-duplicate threshold, without embedding again",
        description="Apply the keep rule at a new --threshold to the pairs an output recorded (any threshold "
        ">= its record threshold), or at the threshold that keeps --target-rows rows, and write a new complete "
        "output.",
    )
    rethreshold.add_argument("source", metavar="OUT", help="a complete chatsieve output")
    target = rethreshold.add_mutually_exclusive_group(required=True)
    target.add_argument("--threshold", type=float, help="the new cosine threshold")
    target.add_argument(
        "--target-rows", type=int, metavar="N",
        help="pick the threshold that keeps as close to N rows as the recorded pairs allow (it is printed)",
    )
    rethreshold.add_argument("--output", required=True, help="where to write the new output")
    rethreshold.add_argument("--overwrite", action="store_true", help="replace a complete output there")

    from jobs.report import add_inspect_arguments, add_report_arguments

    report = commands.add_parser(
        "report", help="rebuild report/ (plots, report.html) and README.md of an existing output",
        description="Redraw the token-length and similarity histograms, report.html and the dataset card from "
        "OUT's manifest.json, neighbors/, removed/ and data/ (for instance after rethreshold).",
    )
    add_report_arguments(report)
    inspect = commands.add_parser(
        "inspect", help="print an output's summary: rows per stage and reason, tokens, time per stage, report path"
    )
    add_inspect_arguments(inspect)

    from jobs.sample import add_sample_arguments

    sample = commands.add_parser(
        "sample",
        help="write synthetic conversations (mixed formats, planted duplicates and bad rows)",
    )
    add_sample_arguments(sample)
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse; an unknown option is refused by its subcommand's parser (its usage, not the top level's),
    with the closest option it has."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        sub = _subparsers(parser)[args.command]
        options = [o for action in sub._actions for o in action.option_strings]
        unknown = next((e.split("=", 1)[0] for e in extras if e.startswith("-")), "")
        close = difflib.get_close_matches(unknown, options, n=1, cutoff=0.6)
        sub.error(f"unrecognized arguments: {' '.join(extras)}" + (f" (did you mean {close[0]}?)" if close else ""))
    return args


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _log_to_console(verbose: bool) -> None:
    # The quick commands log at INFO; the jobs log at WARNING behind their progress display (jobs/runtime.py).
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.command == "sample":
        from jobs.sample import run_sample

        _log_to_console(args.verbose)
        try:
            summary = run_sample(args)
        except (ValueError, OSError) as exc:  # a bad option or an output that is not ours: one line, status 2
            print(f"chatsieve: {exc}", file=sys.stderr)
            return 2
        print(summary)
        return 0

    if args.command in ("report", "inspect"):
        from jobs.report import run_inspect, run_report

        _log_to_console(args.verbose)
        try:
            print(run_report(args) if args.command == "report" else run_inspect(args))
        except (ValueError, OSError) as exc:
            print(f"chatsieve: {exc}", file=sys.stderr)
            return 2
        return 0

    from jobs.runtime import run_command

    if args.command == "rethreshold":
        from jobs import rethreshold

        return run_command(
            args,
            lambda: rethreshold.run(args.source, args.threshold, args.output, args.overwrite, args.target_rows),
            args.output,
        )
    from jobs import prepare

    return run_command(args, lambda: prepare.run(config_from_args(args)), getattr(args, "output", None) or "out")


if __name__ == "__main__":
    sys.exit(main())
