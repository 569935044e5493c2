"""Error and warning types shared by every package of secure-assist.

`SecureAssistError` is the root: the CLI turns it into a one-line message and a
non-zero exit code instead of a traceback. Subclasses say who made the mistake.
The warnings the CLI shows as one line live here too, apart from the code that emits them, so
that the CLI can format them without importing it (it loads torch).
"""


class SecureAssistError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class UserInputError(SecureAssistError):
    """A bad argument, file, model name or configuration supplied by the user."""


class ProtocolError(SecureAssistError):
    """A peer sent something that violates the protocol (bad frame, shape, type, size)."""


class PrivacyWarning(UserWarning):
    """Raised (as a warning) when a run sends signals that the server can read in the clear."""


class CappedRequestWarning(UserWarning):
    """Raised (as a warning) when the data holds fewer samples than a run asked for: the run goes on
    with what there is, and says so."""
