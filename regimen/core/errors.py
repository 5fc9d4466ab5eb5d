"""The exception every library module raises for bad input; `cli.run` turns it into one line and exit 2."""


class UserError(Exception):
    """Bad input (arguments, config, data, files): reported in one line, exit 2."""
