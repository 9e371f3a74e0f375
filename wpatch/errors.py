"""The one error type that wpatch shows to users as a single line."""


class WpatchError(Exception):
    """Bad input or a missing resource: the message names the problem and the way out, on one line."""


def inline(text: str) -> str:
    """A value from a file as it goes into a one-line message: characters that do not print (a line break, a tab)
    written as escapes (`\\n`), the rest as they are."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
