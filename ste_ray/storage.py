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
import hashlib
import io
import uuid
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ste_ray.model import cache_dir


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

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"  # not the base URI: it may carry keys

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
        userinfo = parts.netloc.rpartition("@")[0]
        return f"{parts.scheme}://" + (f"{userinfo}@" if userinfo else "") + self.path \
            + (f"?{parts.query}" if parts.query else "")

    def object_store_source(self) -> tuple[str, dict[str, str]]:
        """This location as Ray Serve LLM downloads a model from object storage: the plain URI, and
        the environment its replicas need for what pyarrow took from the URI (an S3-compatible
        endpoint, keys, region). Ray reads the endpoint and keys only from the environment."""
        parts = urlsplit(self.base_uri)
        if parts.scheme not in ("s3", "gs", "abfss", "azure"):
            raise ValueError(f"{self}: Ray Serve loads models only from s3://, gs:// or azure:// (or a local path)")
        env: dict[str, str] = {}
        if parts.scheme == "s3":
            options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            if "endpoint_override" in options:
                endpoint = options["endpoint_override"]
                env["AWS_ENDPOINT_URL_S3"] = endpoint if "://" in endpoint else f"{options.get('scheme', 'https')}://{endpoint}"
            if "region" in options:
                env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = options["region"]
            if parts.username:
                env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = unquote(parts.username), unquote(parts.password or "")
        return f"{parts.scheme}://{self.path}", env

    # -- queries -----------------------------------------------------------------------------

    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def subdirs(self) -> list[Location]:
        """The directories directly in this one, sorted by name."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path))
        return [dataclasses.replace(self, path=i.path) for i in sorted(infos, key=lambda i: i.path)
                if i.type == pafs.FileType.Directory]

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

    def write_figure(self, figure) -> None:
        """A matplotlib figure as PNG (matplotlib itself writes only local files)."""
        image = io.BytesIO()
        figure.savefig(image, format="png", dpi=110)
        self.write_bytes(image.getvalue())

    def write_table(self, table: pa.Table) -> None:
        """One Parquet file, atomically."""
        self._atomic(lambda path: pq.write_table(table, path, filesystem=self.fs))

    def read_table(self, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path, filesystem=self.fs, schema=schema, columns=columns)

    def read_schema(self) -> pa.Schema:
        return pq.read_schema(self.path, filesystem=self.fs)

    def num_rows(self) -> int:
        """Rows of a Parquet file, from its footer."""
        return pq.read_metadata(self.path, filesystem=self.fs).num_rows

    # -- whole directories, for the libraries that read and write only local files ----------

    def staging_dir(self, purpose: str) -> Path:
        """A local directory that stands for this location: the location itself when local, else a
        directory in the local cache ($STE_RAY_CACHE or ~/.cache/ste-ray; the same one for the same
        URI, so a rerun finds it)."""
        if self.is_local:
            return self.local_path
        key = hashlib.sha256(self.uri().encode()).hexdigest()[:16]
        return cache_dir() / purpose / key

    def upload(self, local: Path) -> None:
        """Copy the local directory ``local`` here (files under the same relative names); nothing to
        do when this location is that directory."""
        if self.is_local and self.local_path == local.resolve():
            return
        self.mkdir()
        pafs.copy_files(str(local.resolve()), self.path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)

    def download(self, local: Path) -> Path:
        """This directory's files copied into ``local`` (nothing to do when this location is that
        directory); returns ``local``."""
        if self.is_local and self.local_path == local.resolve():
            return local
        local.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path, str(local.resolve()), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return local
