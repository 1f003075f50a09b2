"""Image records: builds, uploads, and an image's marker znodes (spec 2.3,
2.4), on the same :class:`~nodepool.zk.records.Record` base as nodes and
requests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from nodepool.zk import paths
from nodepool.zk.decoding import CorruptRecord, decoder, load_object
from nodepool.zk.records import BuildState, Record, UploadState


@dataclass(eq=False)
class ImageBuild(Record):
    """``/nodepool/images/<image>/builds/<build-id>`` (spec 2.3)."""

    FIELDS = (
        ("state", "state", "str", Record.REQUIRED),
        ("state_time", "state_time", "float", 0.0),
        ("builder", "builder", "str?", None),
        ("builder_id", "builder_id", "str?", None),
        ("formats", "formats", "any", ""),
        ("username", "username", "str?", "zuul"),
        ("python_path", "python_path", "str?", "/usr/bin/python2"),
        ("shell_type", "shell_type", "str?", None),
    )

    image_name: str = ""
    id: str | None = None
    state: str = BuildState.BUILDING
    state_time: float = field(default_factory=time.time)
    builder: str | None = None
    builder_id: str | None = None
    formats: list[str] = field(default_factory=list)
    username: str | None = "zuul"
    python_path: str | None = "/usr/bin/python2"
    shell_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = -1

    @classmethod
    @decoder
    def from_json(cls, image_name: str, build_id: str | None,
                  raw: bytes | str | None, version: int = -1) -> "ImageBuild | None":
        data = load_object(raw)
        if data is None:
            return None
        kwargs = cls._decode_fields(data)
        formats = kwargs["formats"]
        if isinstance(formats, str):
            kwargs["formats"] = [f for f in formats.split(",") if f]
        elif isinstance(formats, list) and all(isinstance(f, str) for f in formats):
            kwargs["formats"] = list(formats)
        else:
            raise CorruptRecord("field 'formats': expected a comma-joined string")
        return cls(image_name=image_name, id=build_id, version=version, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = self._encode_fields()
        # The wire form is a sorted, comma-joined string, omitted when empty;
        # builder and builder_id are only written when known.
        if self.formats:
            out["formats"] = ",".join(sorted(set(self.formats)))
        else:
            out.pop("formats")
        for key in ("builder", "builder_id"):
            if out.get(key) is None:
                out.pop(key)
        return out

    def set_state(self, state: str) -> None:
        if state not in BuildState.ALL:
            raise ValueError(f"invalid build state {state!r}")
        self.state = state
        self.state_time = time.time()

    @property
    def dib_id(self) -> str:
        """The operator-facing id: ``<image>-<build id>``."""
        return f"{self.image_name}-{self.id}"


@dataclass(eq=False)
class ImageUpload(Record):
    """``.../builds/<build-id>/providers/<provider>/images/<upload-id>``."""

    FIELDS = (
        ("state", "state", "str", Record.REQUIRED),
        ("state_time", "state_time", "float", 0.0),
        ("external_id", "external_id", "str?", None),
        ("external_name", "external_name", "str?", None),
        ("format", "format", "str?", None),
        ("username", "username", "str?", "zuul"),
        ("python_path", "python_path", "str?", "/usr/bin/python2"),
        ("shell_type", "shell_type", "str?", None),
    )

    image_name: str = ""
    build_id: str = ""
    provider_name: str = ""
    id: str | None = None
    state: str = UploadState.UPLOADING
    state_time: float = field(default_factory=time.time)
    external_id: str | None = None
    external_name: str | None = None
    format: str | None = None
    username: str | None = "zuul"
    python_path: str | None = "/usr/bin/python2"
    shell_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = -1

    @classmethod
    @decoder
    def from_json(cls, image_name: str, build_id: str, provider_name: str,
                  upload_id: str | None, raw: bytes | str | None,
                  version: int = -1) -> "ImageUpload | None":
        data = load_object(raw)
        if data is None:
            return None
        return cls(image_name=image_name, build_id=build_id,
                   provider_name=provider_name, id=upload_id, version=version,
                   **cls._decode_fields(data))

    def set_state(self, state: str) -> None:
        if state not in UploadState.ALL:
            raise ValueError(f"invalid upload state {state!r}")
        self.state = state
        self.state_time = time.time()

    @property
    def path(self) -> str:
        """The full znode path; the launcher stores it as a node's image_id."""
        return paths.upload(self.image_name, self.build_id, self.provider_name,
                            self.id or "")


@dataclass(eq=False)
class ImageFlags:
    """The marker znodes of one image: ``pause`` and ``request-build``."""

    image_name: str
    paused: bool = False
    # Creation time of the request-build marker (epoch seconds), if present.
    build_requested_at: float | None = None
