"""``dasslab-export-weights ckpt=PATH [out=PATH.safetensors]``: a checkpoint's weights as safetensors.

The library behind it: :mod:`dasslab.export.weights`.
"""

from __future__ import annotations

import sys

from dasslab.commands.app import EXIT_USER_ERROR, one_line, parse_settings
from dasslab.errors import DasslabError
from dasslab.export.weights import export_weights

USAGE = "usage: dasslab-export-weights ckpt=PATH [out=PATH.safetensors] [trust_checkpoint=true]"
HELP = f"""{USAGE}

Write a checkpoint's weights (and what dasslab needs to rebuild the model) as a .safetensors file, which loads
without running code anywhere a checkpoint is accepted (ckpt=, segmenter.init_ckpt=, guide_ckpt=, …).

options:
  ckpt=PATH              a .ckpt/.pth checkpoint (required)
  out=PATH               the .safetensors file to write (default: beside ckpt, same name)
  trust_checkpoint=true  also unpickle a checkpoint that needs code to load (only a file you trust)

Settings are Hydra-style key=value, as for every dasslab command. Errors are one line. Reference:
docs/reference.md#loading-files-you-did-not-make."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, _ = parse_settings(argv, {"ckpt": None, "out": None, "trust_checkpoint": False}, HELP)
        if not args["ckpt"]:
            raise DasslabError(f"ckpt: a value is required (ckpt=PATH); {USAGE}")
        trust = str(args["trust_checkpoint"]).strip().lower() in ("1", "true", "yes", "on")
        out = export_weights(str(args["ckpt"]), None if args["out"] is None else str(args["out"]), trust=trust)
    except DasslabError as e:  # one line, as every entry point prints it (dasslab/commands/app.py)
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"weights: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
