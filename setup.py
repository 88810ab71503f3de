# setuptools needs setup.py only for cffi_modules; all metadata is in pyproject.toml.
from setuptools import setup

setup(
    cffi_modules=[
        "native/build_core.py:ffibuilder",
        "native/build_fuseext.py:ffibuilder",
    ],
)
