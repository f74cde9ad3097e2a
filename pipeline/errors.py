"""The one exception type for mistakes a user can fix (bad config, bad folder, bad file)."""


class UserError(Exception):
    """A problem with the user's input: printed as one clear message, never a traceback.

    The message names the file or key and says how to fix it.
    """
