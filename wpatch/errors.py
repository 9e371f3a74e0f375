"""The errors wpatch shows to users: `WpatchError` (bad input, one line) and `RunInterrupted` (`wpatch.run` stopped
by a signal)."""


class WpatchError(Exception):
    """Bad input or a missing resource: the message names the problem and the way out, on one line."""


def inline(text: str) -> str:
    """A value from a file as it goes into a one-line message: characters that do not print (a line break, a tab)
    written as escapes (`\\n`), the rest as they are."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class RunInterrupted(KeyboardInterrupt):
    """`wpatch.run` stopped early by Ctrl-C (SIGINT) or SIGTERM, before its next batch: every finished batch is kept
    in its folder, and the message says how to continue from Python (`wpatch.run` with the same arguments, that
    `output_dir` and `resume=True`). A KeyboardInterrupt, so it ends a notebook cell or script as Ctrl-C does."""

    def __init__(self, message: str, signum: int, output_dir: str):
        super().__init__(message)
        self.signum = signum
        self.output_dir = output_dir
