"""Exceptions the library raises on purpose, so callers can catch them by kind."""


class MissingDependency(ImportError):
    """An optional backend is not installed; the message says what to pip install."""


class IndexFormatError(ValueError):
    """A saved index is missing files, was written by a newer format, or does not match the request."""
