"""Where stages read and write: a local directory or any pyarrow filesystem URI (``s3://``,
``gs://``, ``hdfs://``, ``file://``; a shared mount is a local path). One code path for all of
them: ``Location`` is a path on a ``pyarrow.fs.FileSystem``.

Writes are atomic on every filesystem: locally a temporary name then a rename; on object stores an
object appears only when its upload completes, so it is written under its final name (a rename
there is a copy). S3 options ride in the URI as pyarrow reads them, e.g.
``s3://bucket/runs/x?endpoint_override=minio:9000&scheme=http`` for an S3-compatible server;
credentials come from the usual environment variables or instance role, or from the URI
(``s3://KEY:SECRET@bucket/...``), which ``str()`` never shows."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


@dataclasses.dataclass(frozen=True)
class Location:
    """A file or directory: ``path`` on ``fs``. ``base_uri`` keeps the URI's scheme and options so
    that ``str()`` of a child is a URI a user (or another job) can pass back in."""

    fs: pafs.FileSystem
    path: str
    base_uri: str = ""  # "" for the local filesystem

    @classmethod
    def of(cls, where: str | Path | Location) -> Location:
        if isinstance(where, Location):
            return where
        text = str(where)
        if "://" not in text:
            return cls(pafs.LocalFileSystem(), str(Path(text).expanduser().resolve()))
        fs, path = pafs.FileSystem.from_uri(text)
        if isinstance(fs, pafs.LocalFileSystem):  # file:///x
            return cls(fs, path)
        return cls(fs, path.rstrip("/"), text)

    @property
    def is_local(self) -> bool:
        return not self.base_uri

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self} is not on the local filesystem")
        return Path(self.path)

    def __truediv__(self, name: str) -> Location:
        return dataclasses.replace(self, path=f"{self.path.rstrip('/')}/{name}")

    def __str__(self) -> str:
        if self.is_local:
            return self.path
        scheme = urlsplit(self.base_uri).scheme
        return f"{scheme}://{self.path}"  # without the query: options are not shown in messages

    def uri(self) -> str:
        """A URI for this location with the base's options (what a worker or a later job is given)."""
        if self.is_local:
            return self.path
        parts = urlsplit(self.base_uri)
        return f"{parts.scheme}://{self.path}" + (f"?{parts.query}" if parts.query else "")

    # -- queries -----------------------------------------------------------------------------

    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def files(self, suffix: str = ".parquet") -> list[Location]:
        """The files directly in this directory whose names end in ``suffix`` (not hidden ones:
        those are writes in progress), sorted by name; none if the directory does not exist."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return [dataclasses.replace(self, path=i.path) for i in sorted(infos, key=lambda i: i.path)
                if i.type == pafs.FileType.File and i.base_name.endswith(suffix) and not i.base_name.startswith(".")]

    # -- reading and writing -----------------------------------------------------------------

    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def remove_dir(self) -> None:
        if self.is_dir():
            self.fs.delete_dir(self.path)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def _atomic(self, write) -> None:
        parent = self.path.rstrip("/").rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if not self.is_local:
            write(self.path)
            return
        tmp = f"{parent}/.{self.name}.{uuid.uuid4().hex}.tmp"
        write(tmp)
        self.fs.move(tmp, self.path)

    def write_bytes(self, data: bytes) -> None:
        def write(path: str) -> None:
            with self.fs.open_output_stream(path) as f:
                f.write(data)
        self._atomic(write)

    def write_text(self, text: str) -> None:
        """Write a file so that a reader sees the old content or the new, never half of it."""
        self.write_bytes(text.encode("utf-8"))

    def write_table(self, table: pa.Table) -> None:
        """One Parquet file, atomically."""
        self._atomic(lambda path: pq.write_table(table, path, filesystem=self.fs))

    def read_table(self, schema: pa.Schema | None = None) -> pa.Table:
        return pq.read_table(self.path, filesystem=self.fs, schema=schema)

    def read_schema(self) -> pa.Schema:
        return pq.read_schema(self.path, filesystem=self.fs)
