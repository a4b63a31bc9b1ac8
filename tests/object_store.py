"""An S3-compatible object store on this machine, for the bucket storage path.

No cloud is reachable from here, so the tests run moto's S3 server (a real HTTP endpoint
speaking the S3 API) in a subprocess and hand pyarrow / Ray Train an `s3://` URI whose query
points at it: the same code path as a real bucket, from URI parsing to multipart uploads.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# pyarrow takes no credentials in a URI: they come from the environment (on a real cluster,
# from the node's instance role). Set before any process that opens the bucket starts, so
# Ray's raylets and workers inherit them.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true"}
OPTIONS = "scheme=http&region=us-east-1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ObjectStore:
    def __init__(self, log: Path):
        for name, value in CREDENTIALS.items():
            os.environ.setdefault(name, value)
        self.port = _free_port()
        self._log = open(log, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the S3 server did not start; see {log}") from None
                time.sleep(0.2)

    def uri(self, bucket: str, prefix: str = "") -> str:
        """s3://BUCKET/PREFIX?endpoint_override=...; the bucket is created."""
        fs = self.filesystem()
        fs.create_dir(bucket)
        return f"s3://{bucket}/{prefix}".rstrip("/") + f"?endpoint_override=127.0.0.1:{self.port}&{OPTIONS}"

    def filesystem(self):
        import pyarrow.fs

        return pyarrow.fs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http", region="us-east-1",
                                       access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                       secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], allow_bucket_creation=True)

    def files(self, path: str) -> dict[str, int]:
        """Every object under BUCKET/PREFIX: relative key -> size."""
        import pyarrow.fs

        fs = self.filesystem()
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True))
        return {i.path[len(path) + 1:]: i.size for i in infos if i.type == pyarrow.fs.FileType.File}

    def read(self, key: str) -> bytes:
        with self.filesystem().open_input_stream(key) as stream:
            return stream.read()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()
