"""The one exception type for user mistakes: its message names the fix, and the CLI prints it as one line."""


class HarnessError(Exception):
    """A problem with the user's input (path, task name, option, data file), not a bug in the harness."""
