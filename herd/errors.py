class HerdError(Exception):
    """A failure whose message names its cause; CLIs print it without a traceback."""
