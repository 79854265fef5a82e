"""The one error type for bad user input."""


class QuantmlInputError(ValueError):
    """Bad user input: the message names what is wrong and how to fix it."""
