"""Errors whose message is meant for the user: one line, no traceback."""


class UserError(Exception):
    """Bad input from the user (a flag, a file, a row): the CLI prints it and exits 2."""


class ModelError(UserError):
    """A model could not be resolved or loaded."""


class DataError(UserError):
    """Bad training data; the message names the file and row."""


class NonFiniteLoss(Exception):
    """The loss or gradient was NaN or infinite; no weight was changed."""
