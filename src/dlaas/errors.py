"""One root error for the whole package, one subclass per subsystem.

A message that reaches a user says what was wrong and what to do about it.
"""


class DlaasError(Exception):
    """Root of every error dlaas raises on purpose."""


class ConfigError(DlaasError):
    """A setting or backend URL is invalid; raised at start, before any work."""


class StorageError(DlaasError):
    """The object store failed; callers may retry (transient) unless a subclass says otherwise."""


class InvalidKey(StorageError, ValueError):
    """A storage key is unsafe (``..``, absolute, NUL) or malformed. Never retried."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """No object is stored under the key."""


class QueueError(DlaasError):
    """The queue failed; the operation may be retried."""


class ReceiptInvalid(QueueError):
    """A receipt handle is stale: the message was re-delivered or already deleted."""


class ModelError(DlaasError):
    """The model could not be built, loaded or run."""


class ImageError(ModelError):
    """An image could not be decoded; the message is safe to show in a result."""


class ModelNotFound(ModelError):
    """A request named a model or version that the repository does not hold (404)."""


class ModelUnavailable(ModelError):
    """The model is known but has no READY version: broken, loading or unloaded (503)."""


class ScalingError(DlaasError):
    """The controller or a launcher failed."""


class ApiError(DlaasError):
    """The client's request was refused by the service, or the service could not be reached.

    Not ``ClientError``: that name is botocore's, and both appear in the same tracebacks.
    """


class WebError(DlaasError):
    """A request was refused; carries the HTTP status and a user-facing detail."""

    def __init__(
        self,
        status_code: int,
        error: str,
        detail: str,
        extra: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {detail}")
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.extra = extra or {}  # more fields for the JSON body, e.g. the job_id to poll
        self.headers = headers or {}
