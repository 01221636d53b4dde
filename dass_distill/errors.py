"""Errors a user can cause, reported as one line by the CLI."""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix."""
