"""The package version, in a module of its own so the format can stamp it without importing
the package (whose __init__ imports the API, which imports the format)."""

__version__ = "0.1.0"
