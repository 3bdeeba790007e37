"""Interpreter-start hook: patch clip_benchmark when, and only when, it is imported.

Loaded by file path from ``dc_zoo_clip_benchmark.pth`` (so importing it does not import dc_zoo
or torch), it adds one ``sys.meta_path`` finder. When ``clip_benchmark.models``,
``clip_benchmark.cli`` or ``clip_benchmark.metrics.zeroshot_classification`` finishes executing,
the finder calls the matching ``dc_zoo.clip_benchmark.registration.patch_*`` function. A failure
there is logged, never raised: a broken dc_zoo must not break clip_benchmark for CLIP models.
Standard library only; no relative imports.
"""
import importlib.abc
import logging
import sys

_PATCHES = {
    "clip_benchmark.models": "patch_models_module",
    "clip_benchmark.cli": "patch_cli_module",
    "clip_benchmark.metrics.zeroshot_classification": "patch_zeroshot_module",
}


class _PatchingLoader(importlib.abc.Loader):
    """Delegates to the real loader, then patches the freshly executed module."""

    def __init__(self, loader, patch_name):
        self._loader = loader
        self._patch_name = patch_name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            from dc_zoo.clip_benchmark import registration

            getattr(registration, self._patch_name)(module)
        except Exception:  # noqa: BLE001 - never break clip_benchmark itself
            logging.getLogger("dc_zoo.clip_benchmark").warning(
                "dc_zoo could not register Diffusion Classifier in %s; run `python -m dc_zoo.clip_benchmark` "
                "to see the error.", module.__name__, exc_info=True)

    def __getattr__(self, name):  # get_source, get_filename, ... for tracebacks and inspect
        return getattr(self._loader, name)


class ClipBenchmarkPatcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the clip_benchmark modules it patches."""

    def find_spec(self, fullname, path=None, target=None):
        patch_name = _PATCHES.get(fullname)
        if patch_name is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader, patch_name)
                return spec
        return None


def install():
    if not any(type(f).__name__ == "ClipBenchmarkPatcher" for f in sys.meta_path):
        sys.meta_path.insert(0, ClipBenchmarkPatcher())


install()
