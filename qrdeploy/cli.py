"""The command line: a thin argparse layer over the library. `main(argv) -> int` returns the exit
code: 0 success, 1 a QrdeployError (one line), 2 usage, 3 a `check` threshold failed, 130 Ctrl-C,
141 a closed output pipe (`| head`), 143 SIGTERM (handled as Ctrl-C: progress saved the same).

Each subcommand lives in qrdeploy/commands/<name>.py and defines HELP, add_arguments(parser) and
run(args) -> int; run() only parses options into a library call and prints its result. A command
names the options that are paths it writes in OUTPUT_FILES (and OUTPUT_DIRS for folders): they are
checked before run(), so an unwritable `-o` fails at once, not after the work."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import signal
import sys
import threading
from collections.abc import Sequence

from qrdeploy import commands
from qrdeploy.commands._types import seed_value
from qrdeploy.core.fileio import check_distinct_paths, check_output_dir, check_output_file
from qrdeploy.core.version import __version__
from qrdeploy.errors import QrdeployError, UsageError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CHECK_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_BROKEN_PIPE = 141  # as a shell reports a command ended by SIGPIPE
EXIT_TERMINATED = 143  # SIGTERM (a CI timeout, a supervisor): handled as Ctrl-C, saved the same


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be: every handler that saves progress on Ctrl-C saves
    it on SIGTERM too."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def _stopped(exc: KeyboardInterrupt) -> int:
    """The line and exit code of a run stopped by Ctrl-C (130) or SIGTERM (143)."""
    if isinstance(exc, Terminated):
        print("qrdeploy: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    print("qrdeploy: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--seed", type=seed_value, default=0,
                   help="one seed for numpy, torch and every attack (an integer >= 0)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info lines")
    g.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qrdeploy",
        description="ONNX deployment hardening and honest robustness evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"qrdeploy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common()
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue  # shared option helpers, not a command
        module = importlib.import_module(f"qrdeploy.commands.{info.name}")
        name = info.name.replace("_", "-")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, parents=[common])
        module.add_arguments(p)
        flags = {a.dest: (a.option_strings[-1] if a.option_strings
                          else str(a.metavar or a.dest.upper())) for a in p._actions}
        p.set_defaults(_run=module.run, _outputs=getattr(module, "OUTPUT_FILES", ()),
                       _output_dirs=getattr(module, "OUTPUT_DIRS", ()), _flags=flags, _parser=p)
    return parser


def _check_outputs(args: argparse.Namespace) -> None:
    """OutputError (exit 1, one line) for an output option that cannot be written, that names a
    file the command reads, or that another output option names too."""
    outputs = {dest: getattr(args, dest) for dest in args._outputs if getattr(args, dest, None)}
    for path in outputs.values():
        check_output_file(path)
    for dest in args._output_dirs:
        if getattr(args, dest, None):
            check_output_dir(getattr(args, dest))
    check_distinct_paths(outputs, _input_files(args), args._flags)


def _input_files(args: argparse.Namespace) -> dict[str, str]:
    """The options whose value names an existing file (a model, a policy, a recipe, results, an
    npz: data set), by dest; harden's MODEL is left out (harden's own rule: -o may be MODEL
    under --in-place)."""
    skip = {*args._outputs, *args._output_dirs}
    if hasattr(args, "in_place"):
        skip.add("model")
    found = {}
    for dest, value in vars(args).items():
        if dest.startswith("_") or dest in skip:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str | os.PathLike):
                text = os.fspath(item)
                text = text.removeprefix("npz:")
                if os.path.isfile(text):
                    found[dest] = text
    return found


def main(argv: Sequence[str] | None = None) -> int:
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:  # before the command ran (while its modules were imported)
        return _stopped(exc)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # the command's own usage line, not the top-level one
            args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse: 0 for --help/--version, 2 for usage errors
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", force=True
    )
    if args.quiet:
        os.environ["QRDEPLOY_QUIET"] = "1"
    try:
        _check_outputs(args)
        code = int(args._run(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return code
    except QrdeployError as exc:
        print(f"qrdeploy: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR
    except KeyboardInterrupt as exc:
        return _stopped(exc)
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # an internal bug: one line unless --debug asks for the traceback
        if args.debug:
            raise
        print(f"qrdeploy: internal error: {type(exc).__name__}: {exc} (rerun with --debug)",
              file=sys.stderr)
        return EXIT_ERROR
    finally:
        # workers or a Ray connection a sharded run started (only loaded if one was asked for)
        shard = sys.modules.get("qrdeploy.evaluation.shard")
        if shard is not None:
            shard.release()


def entry() -> None:
    sys.exit(main())
