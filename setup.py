"""dc_zoo: Diffusion Classifier as a zero-shot model of the CLIP_benchmark / timm zoo.

The registry entries live in the top-level ``registry/`` folder (data, not code) and are
installed as the ``dc_zoo.registry_data`` package so that code finds them the same way in an
editable checkout and in a wheel.
"""
from setuptools import find_packages, setup

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
        "dc_zoo": ["py.typed", "hub_cache/**/*"],
        "dc_zoo.registry_data": ["*.json"],
    },
    include_package_data=True,
    install_requires=[
        # torch/torchvision: any release the machine provides; the engine needs SDPA (2.1+).
        "torch>=2.1",
        "torchvision>=0.16",
        "diffusers>=0.30,<0.50",
        "transformers>=4.40",
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
        "test": ["pytest>=7", "scikit-learn>=1.3", "scikit-image>=0.21", "webdataset>=0.2"],
        "train": ["scikit-learn>=1.3"],
        "winoground": ["datasets>=2.14"],
    },
    entry_points={"console_scripts": ["dc-zoo=dc_zoo.cli:main"]},
)
