"""The one exception type for user mistakes: the CLI prints its message as one line and exits non-zero."""


class MitosegError(Exception):
    """A problem with the user's input or options (bad path, wrong shape, existing output...)."""
