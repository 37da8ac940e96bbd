"""sdkit's version: a leaf module, so that any layer can record it without importing the package's public API."""

__version__ = "0.1.0"
