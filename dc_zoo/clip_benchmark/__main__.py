"""``python -m dc_zoo.clip_benchmark eval|build ...``: clip_benchmark's own CLI, DC registered explicitly.

Same arguments and outputs as the ``clip_benchmark`` command; it works without the ``.pth``
import hook (e.g. from a source checkout or where site-packages ``.pth`` files are ignored).
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from .registration import register

    register()
    from clip_benchmark.cli import main as clip_benchmark_main

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    return clip_benchmark_main() or 0


if __name__ == "__main__":
    sys.exit(main())
