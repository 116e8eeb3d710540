"""Object stores a dataset lives in: a local directory or an S3-compatible bucket.

Both expose the same small interface, keyed by '/'-separated relative keys:

- ``put_bytes(key, data)`` replaces an object atomically (readers see the old or the new
  bytes, never a half-written object);
- ``put_if_absent(key, data)`` creates an object only if no object has that key and says
  whether it did — the primitive that makes manifest commits safe under concurrency
  (local: ``os.link`` of a finished temp file; S3: ``PUT`` with ``If-None-Match: *``);
- ``get_bytes``, ``get_range`` (random access into shards), ``iter_bytes`` (a whole shard,
  streamed), ``list``, ``exists``,
  ``size``, ``delete``.

``open_store(url)`` picks the backend: ``s3://bucket/prefix`` or a filesystem path.
The S3 endpoint comes from ``endpoint_url`` or the standard ``AWS_ENDPOINT_URL`` env.

An S3 call that fails on the way (endpoint down, connection reset, timeout, a 5xx or throttling answer) is
retried with exponential backoff (0.25 s doubling to 4 s, with jitter) for up to
``$LDISC_S3_RETRY_SECONDS`` (default 120 s); each retry is counted, and ``take_retries()`` hands the
count to the trainer (metric ``ldisc_data_store_retries_total``).
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)
_RETRIES = 0          # S3 calls retried by this process since the last take_retries()


def take_retries() -> int:
    """S3 calls this process retried since the previous call (and reset the count)."""
    global _RETRIES
    n, _RETRIES = _RETRIES, 0
    return n


class StoreError(RuntimeError):
    """An object store operation failed (missing object, bad URL, backend error)."""


def _check_key(key: str) -> str:
    """Reject keys that could leave the store root ('..', absolute, empty parts)."""
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid object key {key!r}")
    return key


class LocalStore:
    """A dataset in a local (or network-mounted) directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.url = str(self.root)

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _temp_beside(self, final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex}-{final.name}"

    def _durable_temp(self, final: Path, data: bytes) -> Path:
        """``data`` written and fsynced to a temporary file beside ``final``."""
        tmp = self._temp_beside(final)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def put_bytes(self, key: str, data: bytes) -> None:
        final = self.path(key)
        os.replace(self._durable_temp(final, data), final)

    def put_file(self, key: str, local_path: str | os.PathLike) -> None:
        """Move/copy a finished local file into place atomically."""
        final = self.path(key)
        tmp = self._temp_beside(final)
        with open(local_path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, final)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        final = self.path(key)
        tmp = self._durable_temp(final, data)
        try:
            os.link(tmp, final)  # atomic and exclusive: fails if the key exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError as e:
            raise StoreError(f"no object {key!r} in {self.url}") from e

    def get_range(self, key: str, start: int, length: int) -> bytes:
        with open(self.path(key), "rb") as f:
            return os.pread(f.fileno(), length, start)

    def iter_bytes(self, key: str, chunk: int = 1 << 20):
        """The whole object in chunks (one sequential read)."""
        try:
            with open(self.path(key), "rb") as f:
                while data := f.read(chunk):
                    yield data
        except FileNotFoundError as e:
            raise StoreError(f"no object {key!r} in {self.url}") from e

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def list(self, prefix: str = "") -> list[str]:
        """All finished object keys under ``prefix`` (temp files excluded), sorted."""
        out = []
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        for p in base.rglob("*"):
            if p.is_file() and not p.name.startswith(".tmp-"):
                out.append(p.relative_to(self.root).as_posix())
        return sorted(out)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for direct reads, or None for remote stores."""
        return self.path(key)


class S3Store:
    """A dataset under ``s3://bucket/prefix`` of an S3-compatible object store."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None):
        from ldisc.cli_errors import require

        boto3 = require("boto3", "s3")
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        self.retry_seconds = float(os.environ.get("LDISC_S3_RETRY_SECONDS", 120))
        self.client = boto3.client(      # one attempt per call: _call retries, with backoff, and counts
            "s3", endpoint_url=self.endpoint_url,
            config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30),
        )

    def _call(self, method: str, **kwargs):
        """``self.client.<method>(**kwargs)``, retried (see :meth:`_retry`)."""
        return self._retry(method, lambda: getattr(self.client, method)(**kwargs))

    def _retry(self, what: str, fn):
        """``fn()``, retried with backoff while the endpoint is unreachable, drops the connection or answers
        5xx/throttling, for up to ``retry_seconds``; every retry is counted (:func:`take_retries`)."""
        from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError, ResponseStreamingError
        from botocore.exceptions import ConnectionError as EndpointDown     # refused, unreachable, timed out

        global _RETRIES
        deadline, delay = time.monotonic() + self.retry_seconds, 0.25
        while True:
            try:
                return fn()
            except (EndpointDown, HTTPClientError, ResponseStreamingError, IncompleteReadError, ClientError) as e:
                response = getattr(e, "response", None) or {}
                status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                code = response.get("Error", {}).get("Code")
                transient = not isinstance(e, ClientError) or status >= 500 or code in ("SlowDown", "Throttling")
                if not transient or time.monotonic() + delay > deadline:
                    raise
                _RETRIES += 1
                log.warning("%s %s: %s; retrying in %.2f s", self.url, what, e, delay)
                time.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(2 * delay, 4.0)

    def __getstate__(self):  # boto3 clients do not pickle: rebuild in the child
        return {"bucket": self.bucket, "prefix": self.prefix, "endpoint_url": self.endpoint_url}

    def __setstate__(self, state):
        self.__init__(state["bucket"], state["prefix"], state["endpoint_url"])

    def _k(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("put_object", Bucket=self.bucket, Key=self._k(key), Body=data)

    def put_file(self, key: str, local_path: str | os.PathLike) -> None:
        self._call("upload_file", Filename=str(local_path), Bucket=self.bucket, Key=self._k(key))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call("put_object", Bucket=self.bucket, Key=self._k(key), Body=data, IfNoneMatch="*")
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self._retry("get_object", lambda: self.client.get_object(
                Bucket=self.bucket, Key=self._k(key))["Body"].read())
        except ClientError as e:
            raise StoreError(f"cannot read {key!r} from {self.url}: {e}") from e

    def get_range(self, key: str, start: int, length: int) -> bytes:
        rng = f"bytes={start}-{start + length - 1}"
        return self._retry("get_object", lambda: self.client.get_object(
            Bucket=self.bucket, Key=self._k(key), Range=rng)["Body"].read())

    def iter_bytes(self, key: str, chunk: int = 1 << 20):
        """The whole object in chunks: one GET, streamed (whole-shard downloads, ``ldisc.data.shard_cache``)."""
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"]
        except ClientError as e:
            raise StoreError(f"cannot read {key!r} from {self.url}: {e}") from e
        yield from body.iter_chunks(chunk)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call("head_object", Bucket=self.bucket, Key=self._k(key))
            return True
        except ClientError:
            return False

    def size(self, key: str) -> int:
        return self._call("head_object", Bucket=self.bucket, Key=self._k(key))["ContentLength"]

    def list(self, prefix: str = "") -> list[str]:
        if ".." in prefix.split("/") or prefix.startswith("/"):
            raise StoreError(f"invalid prefix {prefix!r}")
        base = self.prefix + "/" if self.prefix else ""
        full, strip = base + prefix, len(base)
        out = []
        page = {"IsTruncated": True}
        while page.get("IsTruncated"):
            more = {"ContinuationToken": page["NextContinuationToken"]} if "NextContinuationToken" in page else {}
            page = self._call("list_objects_v2", Bucket=self.bucket, Prefix=full, **more)
            out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(out)

    def delete(self, key: str) -> None:
        self._call("delete_object", Bucket=self.bucket, Key=self._k(key))

    def local_path(self, key: str) -> None:
        return None


Store = LocalStore | S3Store


def open_store(url: str | os.PathLike, endpoint_url: str | None = None) -> Store:
    """Open the dataset at ``url``: ``s3://bucket[/prefix]`` or a local directory path."""
    text = str(url)
    if text.startswith("s3://"):
        bucket, _, prefix = text[5:].partition("/")
        if not bucket:
            raise StoreError(f"no bucket in {text!r}")
        return S3Store(bucket, prefix, endpoint_url)
    if "://" in text:
        raise StoreError(f"unsupported dataset URL scheme in {text!r} (use a path or s3://)")
    return LocalStore(text)
