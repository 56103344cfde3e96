"""`python -m harness.trainers METHOD [CONFIG.yaml] [key=value ...]`: the launchable entry point.

Meant for `accelerate launch -m harness.trainers ...` and `torchrun -m harness.trainers ...`, where every process
runs this same module; the user-facing command line lives in harness.cli.
"""

from __future__ import annotations

import sys

from harness.errors import HarnessError
from harness.trainers import train


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m harness.trainers METHOD [CONFIG.yaml] [key=value ...]", file=sys.stderr)
        return 2
    method, rest = argv[0], argv[1:]
    config = rest.pop(0) if rest and "=" not in rest[0] else None
    try:
        for path in train(method, config, rest):
            print(path)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
