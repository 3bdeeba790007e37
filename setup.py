"""dc_zoo: Diffusion Classifier as a zero-shot model of the CLIP_benchmark / timm zoo.

The registry entries live in the top-level ``registry/`` folder (data, not code) and are
installed as the ``dc_zoo.registry_data`` package so that code finds them the same way in an
editable checkout and in a wheel.
"""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# Makes the stock `clip_benchmark` command know Diffusion Classifier (dc_zoo/clip_benchmark/registration.py).
CLIP_BENCHMARK_HOOK = os.path.join("dc_zoo", "clip_benchmark", "dc_zoo_clip_benchmark.pth")


class build_py_with_clip_benchmark_hook(build_py):
    """Also place the .pth import hook at the root of the wheel, i.e. of site-packages."""

    def run(self):
        super().run()
        self.copy_file(CLIP_BENCHMARK_HOOK, os.path.join(self.build_lib, os.path.basename(CLIP_BENCHMARK_HOOK)),
                       preserve_mode=0)

    def get_outputs(self, include_bytecode=1):
        return [*super().get_outputs(include_bytecode),
                os.path.join(self.build_lib, os.path.basename(CLIP_BENCHMARK_HOOK))]

setup(
    name="dc_zoo",
    version="0.1.0",
    description="Diffusion Classifier (Li et al., ICCV 2023) as a zero-shot model zoo",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dc_zoo", "dc_zoo.*"]) + ["dc_zoo.registry_data"],
    package_dir={"dc_zoo.registry_data": "registry"},
    package_data={
        "dc_zoo": ["py.typed", "hub_cache/**/*", "clip_benchmark/*.pth"],
        "dc_zoo.registry_data": ["*.json"],
    },
    include_package_data=True,
    install_requires=[
        # torch/torchvision: any release the machine provides; the engine needs SDPA (2.1+).
        "torch>=2.1",
        "torchvision>=0.16",
        "diffusers>=0.31,<0.50",  # 0.31: FLUX's unbatched position ids
        "transformers>=4.56",  # 4.56: from_pretrained(dtype=...)
        "huggingface_hub>=0.24",
        "safetensors>=0.4",
        "accelerate>=0.30",
        "open_clip_torch>=2.24",
        "clip-benchmark==1.6.2",
        "timm>=1.0",
        # clip-benchmark 1.6.2's accuracy() breaks on numpy 2.4.
        "numpy<2.4",
        "tqdm>=4.60",
        "pillow>=9",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.80", "scikit-learn>=1.3", "scikit-image>=0.21", "webdataset>=1.0",
                 "matplotlib>=3.5", "datasets>=2.14"],
        "train": ["scikit-learn>=1.3", "matplotlib>=3.5"],
        # The embedded lab: glyphs are drawn with matplotlib's bundled fonts; the relations set is
        # read by clip_benchmark's Winoground loader through datasets.
        "lab": ["scikit-learn>=1.3", "matplotlib>=3.5", "datasets>=2.14", "webdataset>=1.0"],
        "winoground": ["datasets>=2.14"],
    },
    entry_points={"console_scripts": ["dc-zoo=dc_zoo.cli:main"]},
    cmdclass={"build_py": build_py_with_clip_benchmark_hook},
)
