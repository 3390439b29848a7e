"""latentcheck.core"""

__version__ = "0.1.0"  # the package version (pyproject.toml's); core/ reads it here, never from the root package
