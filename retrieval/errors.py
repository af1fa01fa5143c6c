"""Exceptions the library raises on purpose, so callers can catch them by kind."""


class MissingDependency(ImportError):
    """An optional backend is not installed; the message says what to pip install."""


class IndexFormatError(ValueError):
    """A saved index is missing files, was written by a newer format, or does not match the request."""


class DataError(ValueError):
    """Bad input data (documents, queries, judgments, runs); the message names the file, line and field."""


class LLMError(RuntimeError):
    """The LLM backend failed (server unreachable, HTTP error, malformed reply); the message says where."""
