"""A local S3 server (moto) on 127.0.0.1 that counts requests and can add latency to each one.

    with local_s3(latency_s=0.005) as s3:      # sets AWS_* env (endpoint, fake keys) while open
        ...                                    # s3.endpoint, s3.counts["GET"], s3.counts["GET ranged"]

Used by the shard-cache tests and by ``bench/loader.py`` (GET requests per 1,000 samples, ranged vs
cached, with an injected round-trip time). Requests from any process count (DataLoader workers too).
"""
from __future__ import annotations

import os
import threading
import time
from collections import Counter
from contextlib import contextmanager
from unittest import mock

from ldisc.train.env import free_port


class _Meter:
    """WSGI middleware: counts requests by method (and whether ranged), sleeps ``latency_s`` first."""

    def __init__(self, app, latency_s: float):
        self.app, self.latency_s = app, latency_s
        self.counts: Counter = Counter()
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        kind = environ["REQUEST_METHOD"] + (" ranged" if "HTTP_RANGE" in environ else "")
        with self._lock:
            self.counts[kind] += 1
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        return self.app(environ, start_response)

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()


class LocalS3:
    """A running server: ``endpoint``, ``env`` (what a client subprocess needs), request counts."""

    def __init__(self, endpoint: str, meter: _Meter, env: dict[str, str]):
        self.endpoint, self.meter, self.env = endpoint, meter, env

    @property
    def counts(self) -> Counter:
        return self.meter.counts

    def gets(self) -> int:
        """GET requests so far (ranged or not)."""
        return self.counts["GET"] + self.counts["GET ranged"]


@contextmanager
def local_s3(bucket: str = "ldisc-test", latency_s: float = 0.0):
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    meter = _Meter(DomainDispatcherApplication(create_backend_app), latency_s)
    port = free_port()
    server = make_server("127.0.0.1", port, meter, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    try:
        with mock.patch.dict(os.environ, env):
            import boto3

            boto3.client("s3").create_bucket(Bucket=bucket)
            meter.reset()
            yield LocalS3(endpoint, meter, env)
    finally:
        server.shutdown()
        thread.join(timeout=10)
