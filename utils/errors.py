"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """A mistake the user can fix (bad config, missing data, missing weights): never shown as a traceback."""
