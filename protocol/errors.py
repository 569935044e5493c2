"""Error and warning types shared by every package of secure-assist.

`SecureAssistError` is the root: the CLI turns it into a one-line message and a
non-zero exit code instead of a traceback. Subclasses say who made the mistake.
`PrivacyWarning` lives here too, apart from the mechanisms that emit it, so that the
CLI can format it without importing them (they load torch).
"""


class SecureAssistError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class UserInputError(SecureAssistError):
    """A bad argument, file, model name or configuration supplied by the user."""


class ProtocolError(SecureAssistError):
    """A peer sent something that violates the protocol (bad frame, shape, type, size)."""


class PrivacyWarning(UserWarning):
    """Raised (as a warning) when a run sends signals that the server can read in the clear."""
