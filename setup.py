"""The optional C kernel of the calibration histogram (pytest_int8gate/_histogram.c); everything else about
the package is declared in pyproject.toml. ``optional=True``: on a machine without a C compiler the install
goes on without the kernel and calibration takes the numpy path, which gives the same counts."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pytest_int8gate._histogram",
            sources=["pytest_int8gate/_histogram.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
