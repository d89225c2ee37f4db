"""Errors the engine raises to its callers."""


class UnsupportedModelError(ValueError):
    """The model folder names an architecture or feature the engine does not implement."""


class RequestError(ValueError):
    """A single request is invalid; it finishes with this message and the batch goes on."""
