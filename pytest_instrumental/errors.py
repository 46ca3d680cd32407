"""The one exception type for bad input: a file, a value or a record the user must fix."""


class InputError(Exception):
    """Bad input, with a message that names the file, option or record at fault.

    The plugin turns it into a pytest ``UsageError`` (exit code 4); plain callers print it.
    """
