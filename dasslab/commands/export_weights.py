"""``dasslab-export-weights ckpt=PATH [out=PATH.safetensors]``: a checkpoint's weights as safetensors.

The library behind it: :mod:`dasslab.export.weights`.
"""

from __future__ import annotations

import sys

from dasslab.commands.app import EXIT_USER_ERROR, one_line
from dasslab.errors import CheckpointError, DasslabError
from dasslab.export.weights import export_weights

USAGE = "usage: dasslab-export-weights ckpt=PATH [out=PATH.safetensors] [trust_checkpoint=true]"


def _parse(argv: list[str]) -> dict[str, str]:
    args = {}
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in ("ckpt", "out", "trust_checkpoint"):
            raise CheckpointError(f"{a}: unknown argument; {USAGE}")
        args[key] = value
    if not args.get("ckpt"):
        raise CheckpointError(f"ckpt is required; {USAGE}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    try:
        args = _parse(argv)
        trust = args.get("trust_checkpoint", "false").strip().lower() in ("1", "true", "yes", "on")
        out = export_weights(args["ckpt"], args.get("out"), trust=trust)
    except DasslabError as e:  # one line, as every entry point prints it (dasslab/commands/app.py)
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"weights: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
