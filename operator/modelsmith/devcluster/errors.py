class DevClusterError(Exception):
    """A failure the user can act on; the CLI prints it and exits non-zero, no traceback."""
