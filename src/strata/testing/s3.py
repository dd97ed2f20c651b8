"""A real S3-protocol server on a free loopback port, for the registry's S3 storage driver.

This module owns how tests and benches start an S3-compatible object store: moto's
standalone server (``python -m moto.server``, installed by the ``dev`` extra) in a child
process bound to ``127.0.0.1`` on a free port, with one bucket created through the S3 API
itself. Everything a client sends reaches it over real HTTP with real SigV4 signatures, the
same as with a production object store; its state lives in the child's memory and vanishes
when it stops.

It must not contact anything but the server it started, and it imports nothing from
strata except :mod:`strata.testing.tools`.

Typical use::

    with S3Server(tmp_path) as s3:
        config = {"storage": {"s3": s3.registry_storage(rootdirectory="/reg")}}
        with StrataRegistry(tmp_path / "reg", config=config) as registry:
            ...
        s3.keys(prefix="reg/")   # what the driver left in the bucket
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from strata.testing.tools import Service, ToolError, _stop_child, http_ready, spawn_listening

__all__ = ["S3Server"]

#: Credentials the server accepts (moto checks that a request is signed, not by whom).
ACCESS_KEY = "strata-test-access"
SECRET_KEY = "strata-test-secret"
REGION = "us-east-1"


class S3Server(Service):
    """moto's S3 server in a child process on ``127.0.0.1:<free port>``, with one bucket.

    ``with S3Server(workdir) as s3: s3.endpoint  # "http://127.0.0.1:PORT"``. The server's
    log is ``workdir/s3.log``. :meth:`registry_storage` gives the ``storage.s3`` section of
    a registry config pointing at it; :meth:`client` a synchronous botocore client for
    assertions about what is in the bucket.

    Attributes:
        workdir: where the log goes.
        bucket: the bucket created at start.
        access_key: the access key id clients sign with.
        secret_key: the matching secret.
        region: the region clients name.
        port: the port, once started.
    """

    def __init__(self, workdir: Path, *, bucket: str = "strata-registry", start_timeout: float = 60) -> None:
        self.workdir = workdir
        self.bucket = bucket
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.region = REGION
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = workdir / "s3.log"

    @property
    def endpoint(self) -> str:
        """The server's base URL (``http://127.0.0.1:PORT``)."""
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """The server's log so far."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def registry_storage(self, *, rootdirectory: str = "/", chunksize: int | None = None) -> dict[str, Any]:
        """The ``storage.s3`` section of a registry config that stores in this server.

        Args:
            rootdirectory: key prefix inside the bucket; give each registry sharing one
                server its own, or the same one to make several processes one registry.
            chunksize: multipart part size in bytes (the driver's default when ``None``).

        Returns:
            A dict in the shape of distribution's ``storage.s3`` (``bucket``, ``region``,
            ``regionendpoint``, ``accesskey``, ``secretkey``, ``rootdirectory``, ``secure``
            and, if given, ``chunksize``).
        """
        section: dict[str, Any] = {
            "bucket": self.bucket,
            "region": self.region,
            "regionendpoint": self.endpoint,
            "accesskey": self.access_key,
            "secretkey": self.secret_key,
            "rootdirectory": rootdirectory,
            "secure": False,
        }
        if chunksize is not None:
            section["chunksize"] = chunksize
        return section

    def client(self) -> Any:
        """A synchronous botocore S3 client for this server (path-style addressing).

        Returns:
            A ``botocore`` S3 client; the caller may ``close()`` it.
        """
        import botocore.config
        import botocore.session

        session = botocore.session.get_session()
        return session.create_client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"}
            ),
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``, sorted.

        Args:
            prefix: a key prefix (no leading ``/``).
        """
        client = self.client()
        try:
            found: list[str] = []
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                found.extend(obj["Key"] for obj in page.get("Contents", []))
            return sorted(found)
        finally:
            client.close()

    def multipart_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        """The multipart uploads in progress under ``prefix``: ``(key, upload id)`` pairs."""
        client = self.client()
        try:
            resp = client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
            return sorted((u["Key"], u["UploadId"]) for u in resp.get("Uploads", []))
        finally:
            client.close()

    def iter_objects(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """``(key, size)`` of every object under ``prefix``."""
        client = self.client()
        try:
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"], int(obj["Size"])
        finally:
            client.close()

    def start(self) -> None:
        """Start the server, wait until it answers, and create the bucket.

        Raises:
            ToolError: it did not come up (after three tries on fresh ports) or the bucket
                could not be created.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # Keep the child away from any host AWS configuration and from the network.
        for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            env.pop(name, None)
        self._proc, self.port = spawn_listening(
            lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            lambda port: http_ready(f"http://127.0.0.1:{port}/moto-api/"),
            log=self._log, what="the S3 server (moto)", timeout=self.start_timeout, env=env)
        client = self.client()
        try:
            client.create_bucket(Bucket=self.bucket)
        except Exception as exc:
            self.stop()
            raise ToolError(
                f"could not create bucket {self.bucket!r}: {exc}", cmd=[], returncode=None, stderr=self.log()
            ) from exc
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (its data goes with it). Idempotent."""
        if self._proc is not None:
            _stop_child(self._proc, 10)
            self._proc = None

