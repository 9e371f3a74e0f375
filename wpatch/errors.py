"""The one error type that wpatch shows to users as a single line."""


class WpatchError(Exception):
    """Bad input or a missing resource: the message names the problem and the way out, on one line."""
