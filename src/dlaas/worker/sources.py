"""The source folders a worker reads images from, for jobs over stored images.

Each folder is opened read-only once per process and kept: a job's tasks all name the
same folder. Whatever says the image cannot be read from its source (the folder or
bucket is gone, the object is, its key is unreadable) is ``SourceGone``: the image fails
with that reason, and the job goes on. A store that does not answer is a retry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from dlaas.errors import ConfigError, DlaasError, InvalidKey, ObjectNotFound
from dlaas.storage import Storage, open_source

MAX_OPEN = 64


class SourceGone(DlaasError):
    """The image is not in its source any more (or never could be read)."""


class Sources:
    def __init__(self, opener: Callable[[str], Storage] = open_source) -> None:
        self.opener = opener
        self._open: dict[str, Storage] = {}
        self._lock = threading.Lock()

    def get(self, url: str, key: str) -> bytes:
        folder = self._folder(url)
        try:
            return folder.get(key)
        except ObjectNotFound:
            raise SourceGone(f"{key!r} is no longer in the source {url}") from None
        except InvalidKey as exc:
            raise SourceGone(f"cannot read {key!r} from the source: {exc}") from None

    def _folder(self, url: str) -> Storage:
        with self._lock:
            folder = self._open.get(url)
        if folder is not None:
            return folder
        try:
            folder = self.opener(url)
        except (ConfigError, ObjectNotFound) as exc:
            raise SourceGone(f"the source {url} cannot be opened: {exc}") from None
        with self._lock:
            if len(self._open) >= MAX_OPEN:
                self._open.pop(next(iter(self._open))).close()
            self._open[url] = folder
        return folder

    def close(self) -> None:
        with self._lock:
            for folder in self._open.values():
                folder.close()
            self._open.clear()
