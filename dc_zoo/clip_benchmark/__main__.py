"""``python -m dc_zoo.clip_benchmark eval|build ...``: clip_benchmark's own CLI, DC registered explicitly.

Same arguments and outputs as the ``clip_benchmark`` command; it works without the ``.pth``
import hook (e.g. from a source checkout or where site-packages ``.pth`` files are ignored).

``python -m dc_zoo.clip_benchmark install-hook [--site-dir DIR]`` copies the hook file
``dc_zoo_clip_benchmark.pth`` into site-packages, for installs that did not place it there
(editable installs: setuptools' editable wheels carry no extra top-level files).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
from pathlib import Path

HOOK_FILE = Path(__file__).with_name("dc_zoo_clip_benchmark.pth")


def install_hook(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m dc_zoo.clip_benchmark install-hook",
                                     description="Make the stock `clip_benchmark` command know Diffusion Classifier.")
    parser.add_argument("--site-dir", default=sysconfig.get_paths()["purelib"],
                        help="site-packages folder to copy the .pth file into (default: this interpreter's)")
    args = parser.parse_args(argv)
    target = Path(args.site_dir) / HOOK_FILE.name
    shutil.copyfile(HOOK_FILE, target)
    print(f"installed {target}; `DC_ZOO_NO_CLIP_BENCHMARK_HOOK=1` disables it, deleting the file removes it")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["install-hook"]:
        return install_hook(argv[1:])
    from .registration import register

    register()
    from clip_benchmark.cli import main as clip_benchmark_main

    sys.argv = [sys.argv[0], *argv]
    return clip_benchmark_main() or 0


if __name__ == "__main__":
    sys.exit(main())
