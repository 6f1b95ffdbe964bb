"""pytest fixtures: run a real meetd on free loopback ports (same contract as
tests/lib/server.mjs). MEETD_BIN overrides the binary (default
../../target/debug/meetd relative to this file)."""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MEETD_BIN = Path(os.environ.get("MEETD_BIN") or HERE.parent.parent / "target" / "debug" / "meetd").resolve()
HEALTH_TIMEOUT = float(os.environ.get("MEETD_START_TIMEOUT_MS", "20000")) / 1000

DOMAIN = "meet.jitsi"
AUTH_DOMAIN = "auth.meet.jitsi"


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Meetd:
    def __init__(self, config=None, extra_args=()):
        self.data_dir = tempfile.mkdtemp(prefix="meetd-pytest-")
        self.config = config
        self.extra_args = list(extra_args)
        ports = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.http_port, self.c2s_port, self.component_port = sorted(ports)
        self.media_port = free_port(socket.SOCK_DGRAM)
        self.log_lines = []
        self.proc = None

    def common_args(self):
        args = ["--data-dir", self.data_dir]
        if self.config is not None:
            path = os.path.join(self.data_dir, "meetd-test.toml")
            with open(path, "w") as f:
                f.write(self.config)
            args += ["--config", path]
        return args

    def start(self):
        if not MEETD_BIN.exists():
            raise RuntimeError(f"meetd binary not found at {MEETD_BIN} (cargo build, or set MEETD_BIN)")
        args = [
            str(MEETD_BIN), "serve", *self.common_args(),
            "--http", f"127.0.0.1:{self.http_port}",
            "--https", "off",
            "--c2s", f"127.0.0.1:{self.c2s_port}",
            "--component", f"127.0.0.1:{self.component_port}",
            "--media-port", str(self.media_port),
            # ICE-TCP and TURN off: these suites test XMPP, and fixed ports would collide.
            "--media-tcp-port", "0",
            "--turn-port", "0",
            "--log-level", os.environ.get("MEETD_LOG_LEVEL", "info"),
            *self.extra_args,
        ]
        self.log_lines.append("# " + " ".join(args))
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1"}, text=True, errors="replace",
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + HEALTH_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"meetd exited early (code {self.proc.returncode})\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/about/health", timeout=2) as r:
                    if r.status == 200:
                        return self
                    last = f"status {r.status}"
            except Exception as e:  # noqa: BLE001 - any failure means "not yet"
                last = e
            time.sleep(0.1)
        raise RuntimeError(f"meetd not healthy after {HEALTH_TIMEOUT}s: {last}\n{self.log_tail()}")

    def _pump(self):
        for line in self.proc.stdout:
            self.log_lines.append(line.rstrip("\n"))

    def log_tail(self, n=80):
        return "\n".join(self.log_lines[-n:])

    def user_add(self, jid, password):
        r = subprocess.run(
            [str(MEETD_BIN), "user", "add", jid, *self.common_args()],
            input=password + "\n", capture_output=True, text=True, timeout=30,
        )
        if r.returncode != 0:
            raise RuntimeError(f"meetd user add {jid} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not os.environ.get("MEETD_KEEP_DATA"):
            shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="module")
def meetd():
    server = Meetd()
    server.failed = False
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if server.failed:
            print(f"\n--- meetd log (last 80 lines) ---\n{server.log_tail()}\n--- end meetd log ---")


@pytest.fixture(autouse=True)
def _attach_meetd_log(request):
    """On failure, attach the meetd log to the test report."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and "meetd" in request.fixturenames:
        server = request.getfixturevalue("meetd")
        server.failed = True
        rep.sections.append(("meetd log", server.log_tail()))
