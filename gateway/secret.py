"""Secrets in configs and profiles: read from a file or the environment, never inline.

Its own module so that driver profiles (BLE bind keys, CoAP PSKs) can use it
without importing the config loader, which imports the driver registry.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, model_validator

from .profile import Model
from .units import RelPath
from .yamlsrc import UnreadableFile, read_regular_file

__all__ = ["SECRET_MAX_BYTES", "Secret"]

SECRET_MAX_BYTES = 64 * 1024
"""A secret file larger than this is not a secret someone meant to name."""


class Secret(Model):
    """A secret read from a file or an environment variable, never written inline.

    Inline secrets end up in backups, screenshots and support tickets.
    """

    file: RelPath | None = Field(None, description="path of a file holding the secret (one line)")
    env: str | None = Field(None, description="name of an environment variable holding the secret")

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, data: Any) -> Any:
        if isinstance(data, str | int | float):
            raise ValueError(
                "secrets are not written inline: use {file: /etc/fieldgate/secret} "
                "or {env: VARIABLE_NAME}"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Secret:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of 'file' or 'env'")
        return self

    def reveal(self) -> str:
        """Read the secret now (files can be rotated between reconnects).

        Only a small regular UTF-8 file is read: a FIFO or ``/dev/zero`` named
        here would otherwise block the caller (the status page reads it in the
        event loop) or never end.

        Raises:
            OSError: the file cannot be read, is not a regular file, is larger than 64 KiB, or is not UTF-8.
            KeyError: the environment variable is not set.
        """
        if self.file is not None:
            data = read_regular_file(self.file, SECRET_MAX_BYTES)
            try:
                return data.decode("utf-8").strip("\r\n")
            except UnicodeDecodeError as exc:
                raise UnreadableFile(f"it is not UTF-8 text (byte {exc.start})") from exc
        assert self.env is not None
        return os.environ[self.env]

    def __repr__(self) -> str:
        return f"Secret(file={self.file!s})" if self.file else f"Secret(env={self.env})"
