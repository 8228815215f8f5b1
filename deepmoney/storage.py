"""Local paths and `s3://bucket/prefix` URIs behind one small interface.

Writes are atomic: a local file is written under a temporary name in the same directory and
renamed into place; an S3 object only becomes visible when its (multipart) upload completes.
S3 errors are turned into one-line `StorageError`s that say what to fix.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from deepmoney import env
from deepmoney.config import StorageConfig
from deepmoney.errors import UserError

_CHUNK = 1 << 20
LOCK_FILE = ".lock"  # in a staging directory, never in a published output
COMPLETE_MARKER = ".complete"  # written last into a local copy of a remote tree (fetch_tree)


class StorageError(UserError):
    """A storage location is missing, unreachable or forbidden."""


@dataclass(frozen=True)
class FileRef:
    """One file found under an input URI; `version` changes whenever the content may have changed."""

    uri: str
    size: int
    version: str


def is_s3(uri: str | Path) -> bool:
    """Whether `uri` names an S3 object or prefix."""
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> (`bucket`, `a/b`)."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"invalid S3 URI {uri!r}: expected s3://BUCKET/PREFIX")
    return bucket, key


def join(base: str | Path, *parts: str) -> str:
    """Join path parts onto a local path or S3 URI."""
    base = str(base)
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a local file, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def umask() -> int:
    """This process's file-creation mask (read from /proc where it can be, without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)  # elsewhere: the classic read-and-restore
    os.umask(current)
    return current


def file_mode() -> int:
    """The mode a plain new file gets under the umask (0644 under the usual 022).

    Outputs live on volumes that other users and pods read; `tempfile` creates private (0600)
    files, so everything deepmoney publishes is given this mode instead.
    """
    return 0o666 & ~umask()


def share_tree(root: Path) -> None:
    """Give every file under `root` (and `root` itself, if a file) the umask's mode, directories likewise."""
    mode, dir_mode = file_mode(), 0o777 & ~umask()
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for path in paths:
        if path.is_symlink():
            continue
        os.chmod(path, dir_mode if path.is_dir() else mode)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a local file so that readers see either the old content or the whole new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_once(target: Path, download: Callable[[Path], object]) -> Path:
    """`target`, filled by `download(directory)` unless an earlier call already completed it.

    The download goes into a hidden sibling directory that is marked complete last and then
    renamed into place, so an interrupted download is never mistaken for a finished one. Every
    copy of a remote model, corpus or checkpoint deepmoney makes goes through here.
    """
    if (target / COMPLETE_MARKER).is_file():
        return target
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    download(partial)
    (partial / COMPLETE_MARKER).touch()
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


class Storage:
    """Reads and writes local paths and S3 URIs. One instance per process is enough."""

    def __init__(self, config: StorageConfig | None = None) -> None:
        self.config = config or StorageConfig()
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # A boto3 client cannot cross a process boundary; each process makes its own.
        return {"config": self.config, "_client": None}

    # -- S3 plumbing -------------------------------------------------------------------------
    @property
    def s3(self) -> Any:
        """The boto3 S3 client, made on first use (boto3 is slow to import)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            cfg = Config(
                retries={"max_attempts": self.config.max_attempts, "mode": "standard"},
                s3={"addressing_style": self.config.s3_addressing_style},
            )
            self._client = boto3.client(
                "s3",
                endpoint_url=self.config.s3_endpoint_url or None,
                region_name=self.config.s3_region or None,
                config=cfg,
            )
        return self._client

    @contextmanager
    def _s3_errors(self, uri: str, bucket_request: bool = False) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        bucket = split_s3(uri)[0]
        try:
            yield
        except NoCredentialsError:
            raise StorageError(
                f"no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            ) from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (bucket_request and (code in {"404", "NotFound"} or status == 404)):
                raise StorageError(f"S3 bucket '{bucket}' does not exist ({uri}); create it or fix the URI") from None
            if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"} or status == 403:
                raise StorageError(
                    f"access denied to {uri} ({code or status}); check the S3 credentials and the bucket policy"
                ) from None
            if _is_not_found(exc):
                raise StorageError(f"no such S3 object: {uri}") from None
            raise StorageError(f"S3 request for {uri} failed: {code or status}: {exc}") from None
        except BotoCoreError as exc:
            endpoint = self.config.s3_endpoint_url or env.get(env.AWS_ENDPOINT_URL) or "AWS"
            raise StorageError(
                f"cannot reach S3 ({endpoint}) for {uri}: {exc}; check storage.s3_endpoint_url"
            ) from None

    # -- reading -----------------------------------------------------------------------------
    def list_files(self, uri: str | Path) -> list[FileRef]:
        """Every file at or under `uri`, sorted by URI. Raises StorageError if nothing is there."""
        uri = str(uri)
        if is_s3(uri):
            return self._list_s3(uri)
        path = Path(uri)
        if path.is_file():
            st = path.stat()
            return [FileRef(str(path), st.st_size, f"{st.st_size}:{st.st_mtime_ns}")]
        if path.is_dir():
            refs = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.startswith("."):
                        continue
                    full = Path(root, name)
                    st = full.stat()
                    refs.append(FileRef(str(full), st.st_size, f"{st.st_size}:{st.st_mtime_ns}"))
            return sorted(refs, key=lambda r: r.uri)
        raise StorageError(f"no such file or directory: {uri}")

    def _list_s3(self, uri: str) -> list[FileRef]:
        bucket, key = split_s3(uri)
        refs: list[FileRef] = []
        with self._s3_errors(uri):
            if key and not key.endswith("/"):
                try:
                    head = self.s3.head_object(Bucket=bucket, Key=key)
                    return [FileRef(uri, head["ContentLength"], head["ETag"].strip('"'))]
                except Exception as exc:  # not an object: maybe a prefix
                    if not _is_not_found(exc):
                        raise
                key += "/"
            paginator = self.s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=key):
                for obj in page.get("Contents", []):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    if obj["Key"].endswith("/") or name.startswith("."):
                        continue
                    refs.append(FileRef(f"s3://{bucket}/{obj['Key']}", obj["Size"], obj["ETag"].strip('"')))
        if not refs:
            raise StorageError(f"no objects under {uri}")
        return sorted(refs, key=lambda r: r.uri)

    def exists(self, uri: str | Path) -> bool:
        """Whether a file or object exists at `uri`."""
        uri = str(uri)
        if not is_s3(uri):
            return Path(uri).exists()
        bucket, key = split_s3(uri)
        with self._s3_errors(uri):
            try:
                self.s3.head_object(Bucket=bucket, Key=key)
                return True
            except Exception as exc:
                if _is_not_found(exc):
                    return False
                raise

    def read_bytes(self, uri: str | Path) -> bytes:
        """The whole content of one file or object."""
        uri = str(uri)
        if not is_s3(uri):
            try:
                return Path(uri).read_bytes()
            except FileNotFoundError:
                raise StorageError(f"no such file: {uri}") from None
            except IsADirectoryError:
                raise StorageError(f"expected a file, found a directory: {uri}") from None
        bucket, key = split_s3(uri)
        with self._s3_errors(uri):
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    @contextmanager
    def open_read(self, uri: str | Path) -> Iterator[IO[bytes]]:
        """A binary stream over one file or object, for reading without loading it whole."""
        uri = str(uri)
        if not is_s3(uri):
            try:
                handle = open(uri, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                raise StorageError(f"no such file: {uri}") from None
            with handle:
                yield handle
            return
        bucket, key = split_s3(uri)
        with self._s3_errors(uri):
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            yield body
        finally:
            body.close()

    def fetch_tree(self, uri: str, local_dir: str | Path) -> Path:
        """A local copy of the tree at `uri`, downloaded once (see `download_once`)."""
        return download_once(Path(local_dir), lambda partial: self.download_tree(uri, partial))

    def download_tree(self, uri: str, local_dir: str | Path) -> Path:
        """Copy every object under an S3 prefix (or a local directory) into `local_dir`."""
        local_dir = Path(local_dir)
        base = uri.rstrip("/") + "/"
        for ref in self.list_files(uri):
            rel = ref.uri[len(base) :] if ref.uri.startswith(base) else ref.uri.rsplit("/", 1)[-1]
            target = local_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if is_s3(ref.uri):
                bucket, key = split_s3(ref.uri)
                with self._s3_errors(ref.uri):
                    self.s3.download_file(bucket, key, str(target))
            else:
                shutil.copy2(ref.uri, target)
        return local_dir

    # -- writing -----------------------------------------------------------------------------
    def check_writable(self, uri: str | Path) -> None:
        """Fail early, before any work, when an output location cannot be written."""
        uri = str(uri)
        if is_s3(uri):
            bucket, _ = split_s3(uri)
            with self._s3_errors(uri, bucket_request=True):
                self.s3.head_bucket(Bucket=bucket)
            return
        path = Path(uri)
        if path.exists() and not path.is_dir():
            raise StorageError(f"output {uri} exists and is not a directory; choose another --output")
        parent = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
        if not os.access(parent, os.W_OK):
            raise StorageError(f"cannot write to {uri}: {parent} is not writable")

    def write_bytes(self, uri: str | Path, data: bytes) -> None:
        """Atomically write one file or object."""
        uri = str(uri)
        if not is_s3(uri):
            atomic_write_bytes(uri, data)
            return
        bucket, key = split_s3(uri)
        with self._s3_errors(uri):
            self.s3.put_object(Bucket=bucket, Key=key, Body=data)

    def delete(self, uri: str | Path) -> None:
        """Remove one file or object if present."""
        uri = str(uri)
        if not is_s3(uri):
            Path(uri).unlink(missing_ok=True)
            return
        bucket, key = split_s3(uri)
        with self._s3_errors(uri):
            self.s3.delete_object(Bucket=bucket, Key=key)

    def publish_tree(self, staging: Path, uri: str | Path, last: str = "manifest.json") -> None:
        """Move a finished local staging directory to `uri`, writing the file named `last` at the end.

        The existing `last` file (the completion marker) is removed first, so a reader never sees a
        marker beside a mix of old and new files, even if this is interrupted half-way. Files of an
        earlier output at `uri` that the new one does not have are removed before the marker is
        written (the caller has checked that `uri` holds nothing but an earlier output of the same
        stage, see `deepmoney.stage`). Published files get the umask's mode (`file_mode`).
        """
        uri = str(uri)
        files = sorted(p for p in staging.rglob("*") if p.is_file() and p != staging / LOCK_FILE)
        marker = [p for p in files if p.name == last and p.parent == staging]
        ordered = [p for p in files if p not in marker] + marker
        names = {p.relative_to(staging).as_posix() for p in files}
        self.delete(join(uri, last))
        if is_s3(uri):
            bucket, prefix = split_s3(uri)
            for path in ordered:
                if path in marker:
                    self._remove_stale(uri, names)
                key = "/".join(filter(None, [prefix.rstrip("/"), path.relative_to(staging).as_posix()]))
                with self._s3_errors(f"s3://{bucket}/{key}"):
                    self.s3.upload_file(str(path), bucket, key)
            if not marker:
                self._remove_stale(uri, names)
            return
        target = Path(uri)
        target.mkdir(parents=True, exist_ok=True)
        share_tree(staging)
        for path in ordered:
            if path in marker:
                self._remove_stale(uri, names)
            dest = target / path.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
        if not marker:
            self._remove_stale(uri, names)

    def _remove_stale(self, uri: str, keep: set[str]) -> None:
        """Delete the files under `uri` whose relative path is not in `keep` (an earlier output's leftovers)."""
        base = uri.rstrip("/") + "/"
        try:
            existing = self.list_files(uri)
        except StorageError:
            return
        for ref in existing:
            if ref.uri.startswith(base) and ref.uri[len(base) :] not in keep:
                self.delete(ref.uri)
        if not is_s3(uri):
            for directory in sorted((p for p in Path(uri).rglob("*") if p.is_dir()), reverse=True):
                if not any(directory.iterdir()):
                    directory.rmdir()

    @contextmanager
    def staging_dir(self, output: str | Path, key: str | None = None, keep_on_error: bool = False) -> Iterator[Path]:
        """A private local directory to build an output in, locked while in use.

        For local outputs it sits beside the output (same filesystem, so the final renames are
        atomic) and its name starts with a dot so listings and readers skip it. `key` names it, so
        that a re-run of the same work finds it again (resume); with `keep_on_error` it survives a
        failure or interruption (not a UserError) for that purpose. Otherwise it is removed when the
        work ends. Unlocked leftovers of other runs (killed with SIGKILL, or with another key) are
        removed on the way in; a locked one means another process is writing the same output.
        """
        output = str(output)
        if is_s3(output):
            parent = Path(tempfile.gettempdir()) / "deepmoney-staging"
            prefix = f".{hashlib.sha256(output.encode()).hexdigest()[:12]}.staging-"
        else:
            parent = Path(output).resolve().parent
            prefix = f".{Path(output).name}.staging-"
        parent.mkdir(parents=True, exist_ok=True)
        path = parent / f"{prefix}{(key or secrets.token_hex(8))[:16]}"
        for other in parent.glob(f"{prefix}*"):
            if other != path and other.is_dir() and not _locked(other):
                shutil.rmtree(other, ignore_errors=True)
        path.mkdir(exist_ok=True)
        lock = open(path / LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole build
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StorageError(f"another process is building {output} (its work directory {path} is locked)") from None
        finished = False
        try:
            yield path
            finished = True
        except UserError:
            shutil.rmtree(path, ignore_errors=True)
            raise
        finally:
            lock.close()
            if finished or not keep_on_error:
                shutil.rmtree(path, ignore_errors=True)


def _locked(directory: Path) -> bool:
    """Whether a live process holds the lock of a staging directory."""
    try:
        with open(directory / LOCK_FILE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _is_not_found(exc: Exception) -> bool:
    """Whether an S3 call failed because the object is absent (HTTP 404), and for no other reason."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"404", "NoSuchKey", "NotFound"} or status == 404
