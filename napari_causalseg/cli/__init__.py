"""`causalseg`: synthesise data, train, evaluate, segment and inspect from a shell.

Every subcommand prints a one-line error (no traceback) and exits non-zero on bad
input; `--debug` shows the traceback. Training under torchrun uses DDP:
    torchrun --nproc_per_node 2 -m napari_causalseg.cli train DATA --out RUN
or `causalseg train DATA --out RUN --nproc 2`.
"""

from __future__ import annotations

import sys

from .commands import cmd_evaluate, cmd_info, cmd_segment, cmd_synth
from .common import EXIT_FAILURE, EXIT_USAGE, CLIError
from .parser import _parser
from .training import cmd_finetune, cmd_train

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "CLIError", "main"]

COMMANDS = {"synth": cmd_synth, "train": cmd_train, "finetune": cmd_finetune, "evaluate": cmd_evaluate,
            "segment": cmd_segment, "info": cmd_info}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("causalseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: one clear line for users
        if args.debug:
            raise
        from ..engine.user_errors import USER_ERRORS

        if isinstance(exc, (CLIError, *USER_ERRORS)):
            print(f"causalseg {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"causalseg {args.command}: unexpected error: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE
