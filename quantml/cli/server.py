"""quantml server [key=value ...]: an MLflow tracking server on PostgreSQL for many hosts and jobs.

  quantml server backend_store_uri=postgresql+psycopg://USER:PASSWORD@127.0.0.1:5432/quantml
  QUANTML_SERVER_DB=postgresql+psycopg://USER:PASSWORD@HOST:5432/DB quantml server port=5001

Starts ``mlflow server`` with the runs and the model registry in a PostgreSQL database and
the artifacts served through the server (``--serve-artifacts``: clients upload and download
them over HTTP), waits for its /health and prints the line to use in every shell that trains,
tunes, registers or serves:

  export MLFLOW_TRACKING_URI=http://127.0.0.1:5000

Ctrl-C stops it. Settings are key=value overrides of the packaged conf/server.yaml:
  backend_store_uri=...       the database (default: $QUANTML_SERVER_DB); postgresql:// means psycopg 3
  artifacts_destination=DIR   where the server keeps artifacts (default ./mlartifacts)
  host=127.0.0.1 port=5000    where it listens (host=0.0.0.0: every interface; allowed_hosts=NAME,...)
  workers=2 access_log=false job_execution=false health_timeout_s=120

Exit codes: 0 stopped by Ctrl-C (or SIGTERM); 1 the server failed to start or died; 2 bad input
(no database given, PostgreSQL unreachable, the port taken, a setting that does not exist).
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from quantml.contracts import QuantmlInputError

USAGE = "quantml server [backend_store_uri=postgresql+psycopg://USER:PASSWORD@HOST:5432/DB] [port=5000] [key=value ...]"
DB_ENV = "QUANTML_SERVER_DB"
SETTINGS = (
    "backend_store_uri, artifacts_destination, host, port, workers, allowed_hosts, access_log, "
    "job_execution, health_timeout_s"
)
_ANY_INTERFACE = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class ServerSettings:
    """What ``mlflow server`` is started with (see conf/server.yaml)."""

    backend_store_uri: str  # a SQLAlchemy URL, password included
    artifacts_destination: str
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 2
    allowed_hosts: str | None = None
    access_log: bool = False
    job_execution: bool = False
    health_timeout_s: float = 120.0

    @property
    def tracking_uri(self) -> str:
        """What clients set MLFLOW_TRACKING_URI to (loopback when the server binds every interface)."""
        host = "127.0.0.1" if self.host in _ANY_INTERFACE else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def redacted_backend(self) -> str:
        return redact(self.backend_store_uri)


def redact(uri: str) -> str:
    """``uri`` with its password shown as ``***``."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: show nothing of it that could be a secret
        return "<unreadable URI>"


def backend_uri(uri: str | None) -> str:
    """The SQLAlchemy URL of the PostgreSQL backend: ``postgresql://`` and ``postgres://`` read as
    ``postgresql+psycopg://`` (psycopg 3, installed with quantml). Anything else is bad input."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if uri is None or not str(uri).strip():
        raise QuantmlInputError(
            f"no database for the server: give backend_store_uri=postgresql+psycopg://USER:PASSWORD@HOST:5432/DB "
            f"or set {DB_ENV}=... (a PostgreSQL database the user may create tables in: createdb -O USER DB)"
        )
    text = str(uri).strip()
    if text.startswith("postgres://"):
        text = "postgresql://" + text[len("postgres://") :]
    try:
        url = make_url(text)
    except ArgumentError:
        raise QuantmlInputError(
            f"backend_store_uri {redact(text)!r} is not a database URL; "
            f"expected postgresql+psycopg://USER:PASSWORD@HOST:5432/DB"
        ) from None
    if url.get_backend_name() != "postgresql":
        raise QuantmlInputError(
            f"backend_store_uri {redact(text)!r}: quantml server runs on PostgreSQL "
            f"(postgresql+psycopg://USER:PASSWORD@HOST:5432/DB); the embedded sqlite:///mlflow.db needs no server"
        )
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    elif url.drivername != "postgresql+psycopg":
        import importlib.util

        driver = url.get_driver_name()
        if importlib.util.find_spec(driver) is None:
            raise QuantmlInputError(
                f"backend_store_uri uses the driver {driver!r}, which is not installed: "
                f"use postgresql+psycopg://... (psycopg 3 comes with quantml)"
            )
    if not url.database:
        raise QuantmlInputError(f"backend_store_uri {redact(text)!r} names no database (…/DB at the end)")
    return url.render_as_string(hide_password=False)


def check_database(uri: str, timeout_s: float = 5.0) -> None:
    """Connect once to the backend; a failure is bad input whose message names the fix."""
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    if url.get_driver_name() != "psycopg":
        return  # another installed driver: mlflow server reports its own errors
    import psycopg

    params = {k: v for k, v in url.query.items() if isinstance(v, str)}
    try:
        with psycopg.connect(
            host=url.host or "127.0.0.1",
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            dbname=url.database,
            connect_timeout=max(1, int(timeout_s)),
            **params,
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        where = f"PostgreSQL at {url.host or '127.0.0.1'}:{url.port or 5432}/{url.database}"
        if "does not exist" in detail:
            fix = f"create it (createdb -O {url.username or 'USER'} {url.database}) or fix backend_store_uri / {DB_ENV}"
        elif "password" in detail or "authentication" in detail or "role" in detail:
            fix = f"check the user and password in backend_store_uri / {DB_ENV}"
        else:
            fix = (
                "start PostgreSQL (Debian: pg_ctlcluster <version> main start; a test one: .ci/postgres.sh) "
                f"or fix the host and port in backend_store_uri / {DB_ENV}"
            )
        raise QuantmlInputError(f"{where} refused the server's connection ({detail}): {fix}") from None


def check_port(host: str, port: int) -> None:
    """Bad input when ``host:port`` cannot be bound (another server on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise QuantmlInputError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): another server? choose port=... "
                f"(e.g. port={port + 1}) or host=..."
            ) from None


def settings_from(cfg) -> ServerSettings:
    """The checked settings of a composed conf/server.yaml."""

    def integer(key: str, low: int, high: int) -> int:
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise QuantmlInputError(f"{key}={value!r}: expected a whole number from {low} to {high}")
        return value

    def flag(key: str) -> bool:
        value = cfg.get(key)
        if not isinstance(value, bool):
            raise QuantmlInputError(f"{key}={value!r}: expected true or false")
        return value

    timeout = cfg.get("health_timeout_s")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise QuantmlInputError(f"health_timeout_s={timeout!r}: expected a number of seconds above 0")
    destination = str(cfg.get("artifacts_destination") or "").strip()
    if not destination:
        raise QuantmlInputError(
            "artifacts_destination is empty: give a directory (e.g. artifacts_destination=mlartifacts)"
        )
    if "://" not in destination:  # a directory: absolute, so the server does not depend on its working dir
        destination = str(Path(destination).expanduser().resolve())
    host = str(cfg.get("host") or "").strip()
    if not host:
        raise QuantmlInputError("host is empty: e.g. host=127.0.0.1 (this machine only) or host=0.0.0.0")
    allowed = cfg.get("allowed_hosts")
    return ServerSettings(
        backend_store_uri=backend_uri(cfg.get("backend_store_uri")),
        artifacts_destination=destination,
        host=host,
        port=integer("port", 1, 65535),
        workers=integer("workers", 1, 64),
        allowed_hosts=str(allowed) if allowed not in (None, "") else None,
        access_log=flag("access_log"),
        job_execution=flag("job_execution"),
        health_timeout_s=float(timeout),
    )


def server_command(settings: ServerSettings) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line and the environment it adds (the backend URI travels in
    ``MLFLOW_BACKEND_STORE_URI``, so its password is not on a command line that ``ps`` shows)."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--serve-artifacts",
        "--artifacts-destination",
        settings.artifacts_destination,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--workers",
        str(settings.workers),
    ]
    if settings.allowed_hosts:
        cmd += ["--allowed-hosts", settings.allowed_hosts]
    if not settings.access_log:
        cmd += ["--uvicorn-opts", "--no-access-log"]
    env = {
        "MLFLOW_BACKEND_STORE_URI": settings.backend_store_uri,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if settings.job_execution else "false",
        "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"),
        "PYTHONUNBUFFERED": "1",
    }
    return cmd, env


class TrackingServer:
    """``mlflow server`` as a child process group: :meth:`start` returns once /health answers;
    :meth:`stop` ends the whole group (the server, its workers and any job consumers).

    The server's output is copied line by line to ``log`` (default: stderr); its last lines are
    kept for the message when it fails to start."""

    def __init__(self, settings: ServerSettings, log: TextIO | None = None) -> None:
        self.settings = settings
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self._relay: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return self.settings.tracking_uri

    def _copy_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        sink = self.log or sys.stderr
        for line in self.proc.stdout:
            self.tail.append(line.rstrip("\n"))
            try:
                sink.write(line)
                sink.flush()
            except (OSError, ValueError):  # our own output closed: keep draining the pipe
                pass

    def start(self) -> float:
        """Start the server and wait for its /health; return the seconds it took."""
        cmd, extra_env = server_command(self.settings)
        if "://" not in self.settings.artifacts_destination:
            Path(self.settings.artifacts_destination).mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **extra_env},
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: Ctrl-C reaches us, we stop all of it
        )
        self._relay = threading.Thread(target=self._copy_output, name="mlflow-server-log", daemon=True)
        self._relay.start()
        health = f"{self.uri}/health"
        deadline = started + self.settings.health_timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                self._relay.join(timeout=2)
                raise RuntimeError(
                    f"mlflow server exited with code {code} before {health} answered:\n{self.last_lines()}"
                )
            try:
                with urllib.request.urlopen(health, timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{health} did not answer within {self.settings.health_timeout_s:.0f} s "
                    f"(a slow machine? raise health_timeout_s=...):\n{self.last_lines()}"
                )
            time.sleep(0.25)

    def last_lines(self, n: int = 15) -> str:
        return "\n".join(f"  | {line}" for line in list(self.tail)[-n:]) or "  | (no output)"

    def wait(self) -> int:
        assert self.proc is not None
        code = self.proc.wait()
        if self._relay is not None:
            self._relay.join(timeout=2)
        return code

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to the server's process group, SIGKILL to what is left after ``grace_s``."""
        proc = self.proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:  # the parent is gone: end workers that outlived it
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            break
        if self._relay is not None:
            self._relay.join(timeout=2)


def _interrupt(signum, frame):  # Ctrl-C and SIGTERM stop the server
    raise KeyboardInterrupt


def serve(settings: ServerSettings) -> int:
    """Start the server, print how to use it, block until Ctrl-C / SIGTERM or until it dies."""
    check_port(settings.host, settings.port)
    check_database(settings.backend_store_uri)
    server = TrackingServer(settings)
    print(
        f"quantml server: mlflow server on {settings.host}:{settings.port}, runs and models in "
        f"{settings.redacted_backend}, artifacts served from {settings.artifacts_destination}",
        flush=True,
    )
    print(f"waiting for {server.uri}/health (up to {settings.health_timeout_s:.0f} s) ...", flush=True)
    # set explicitly: a shell's `quantml server &` starts us with SIGINT ignored
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            took = server.start()
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"ready in {took:.1f} s. In every shell that trains, tunes, registers or serves:", flush=True)
        print(f"  export MLFLOW_TRACKING_URI={server.uri}", flush=True)
        if settings.host in _ANY_INTERFACE:
            print(f"  (other machines: http://{socket.gethostname()}:{settings.port})", flush=True)
        print(f"UI: {server.uri}    Ctrl-C stops the server.", flush=True)
        code = server.wait()
        print(f"error: mlflow server exited with code {code}:\n{server.last_lines()}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("stopping the server ...", flush=True)
        server.stop()
        print("stopped.", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    from quantml.cli.common import compose, error_exit, refuse_non_settings

    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        refuse_non_settings(argv, USAGE)
        settings = settings_from(compose("server", argv))
        return serve(settings)
    except Exception as exc:  # noqa: BLE001 - error_exit re-raises what is not bad input
        return error_exit(exc, SETTINGS)


if __name__ == "__main__":
    sys.exit(main())
