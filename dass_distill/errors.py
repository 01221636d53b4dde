"""The one error type a user can cause: every user-facing error derives from ``UserError``.

The command line catches ``UserError`` (and only it) and prints its message as one line
of plain text, so a genuine bug still shows its traceback. This module imports nothing
of the toolkit: the component packages (teachers, students, logit_cache, kernels) derive
their own errors from it without depending on the glue.
"""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix."""
