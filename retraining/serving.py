"""An HTTP endpoint that serves the version behind the alias, and follows the alias.

`mlflow models serve` loads one version at start and serves it until restarted: after a
promotion or a rollback it answers with the old model. Here a thread reads the alias every
`--alias-check-seconds` (and on POST /reload); when it points elsewhere, the new version is
loaded beside the old one and swapped in with one assignment, so a request is answered
whole by one version or the other and none fails during the move.

Requests are parsed, checked against the version's signature and answered by MLflow's own
scoring code, so /predict takes what MLflow's scoring server takes (`dataframe_split`,
`dataframe_records`, `instances`, `inputs`, or CSV) and answers `{"predictions": [...]}`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

# At module level: FastAPI reads the handlers' annotations, which name Request, from here.
from fastapi import Request

from retraining.config import Settings

log = logging.getLogger("retraining")


@dataclasses.dataclass(frozen=True)
class Served:
    """One loaded version and what /model-info says of it: replaced whole, never edited."""

    version: str
    model: Any  # mlflow.pyfunc.PyFuncModel
    info: dict[str, Any]
    loaded_at: str


class AliasFollower:
    """The version behind the alias, loaded; `check()` moves to where the alias points now."""

    def __init__(self, settings: Settings):
        from retraining.registry import Registry

        self.settings = settings
        # Read only: serving never writes a run, a version or an alias. Without the Spark
        # executor watch (spark_engine.ExecutorWatch): an endpoint outlives a cluster's
        # outage, as it does the store's, and a request waits for its executor.
        self._registry = Registry(dataclasses.replace(settings, dry_run=True,
                                                      spark_executor_wait=0.0))
        self._store_file = _store_file_identity(settings.tracking_uri)
        # One check at a time: the interval's and /reload's would otherwise load twice.
        self._checking = threading.Lock()
        self.last_check: dict[str, Any] = {}
        self.served: Served | None = None
        self.check()
        if self.served is None:
            from retraining.errors import NeedsAttention

            raise NeedsAttention(
                f"registered model {settings.model_name!r} has no alias {settings.alias!r} "
                f"to serve ({self.last_check.get('error') or 'not found'})",
                fix="run register_first_model.py, or point --alias at an alias that exists")

    def check(self) -> dict[str, Any]:
        """Read the alias; load and swap in its version when it changed. Never raises: a
        store or a model that fails leaves the served version serving, and says so."""
        from retraining.errors import RetrainingError

        with self._checking:
            started = _now()
            try:
                self._check_store_file()
                version = self._registry.production_version()
                if version is None:
                    raise LookupError(f"no alias {self.settings.alias!r} on "
                                      f"{self.settings.model_name!r}")
                current = self.served
                if current is None or current.version != version:
                    self.served = self._load(version)
                    log.info("serving %s version %s (alias %s), was %s",
                             self.settings.model_name, version, self.settings.alias,
                             current.version if current else "none")
                self.last_check = {"at": started, "ok": True, "alias_version": version}
            # Of any kind (an unreachable store, a model whose files are missing): a serving
            # process outlives the store's outages. Logged, and shown by /health.
            except Exception as error:
                text = (error.one_line() if isinstance(error, RetrainingError)
                        else f"{type(error).__name__}: {' '.join(str(error).split())}")
                self.last_check = {"at": started, "ok": False, "error": text}
                log.error("alias check failed, still serving version %s: %s",
                          self.served.version if self.served else "none", text)
            return self.last_check

    def _check_store_file(self) -> None:
        """MLflow keeps its connection to a SQLite file open: a file restored or copied over
        it would go unseen, the alias read from the old one for ever. Say so instead."""
        from retraining.config import sqlite_database
        from retraining.errors import NeedsAttention

        if self._store_file is None:
            return
        now = _store_file_identity(self.settings.tracking_uri)
        if now != self._store_file:
            database = sqlite_database(self.settings.tracking_uri)
            raise NeedsAttention(
                f"the store file {database} was replaced or moved since the endpoint opened "
                "it, and MLflow still reads the one it opened",
                fix="restart the endpoint (systemctl restart serve_production) to read the "
                    "store that is there now")

    def _load(self, version: str) -> Served:
        from retraining.operations import production_summary

        model = self._registry.load_version(version, flavor="pyfunc")
        info = production_summary(self._registry, self.settings.alias, version)
        return Served(version=version, model=model, info=info, loaded_at=_now())

    def follow(self, stop: threading.Event) -> None:
        """Check every --alias-check-seconds until `stop` is set."""
        while not stop.wait(self.settings.alias_check_seconds):
            self.check()


def _store_file_identity(tracking_uri: str) -> tuple[int, int] | None:
    """Which file a `sqlite:///` store is (device and inode); None for any other store, or
    for a file that is not there now."""
    import os

    from retraining.config import sqlite_database

    database = sqlite_database(tracking_uri)
    if database is None:
        return None
    try:
        found = os.stat(database)
    except FileNotFoundError:
        return (-1, -1)
    return (found.st_dev, found.st_ino)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def create_app(follower: AliasFollower):
    """The FastAPI app: /health, /predict (and /invocations), /model-info, /reload."""
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import invocations

    app = FastAPI(title="classifier serving")
    settings = follower.settings

    def _info(served: Served) -> dict[str, Any]:
        return {"model_name": settings.model_name, "alias": settings.alias,
                "version": served.version, "loaded_at": served.loaded_at,
                "last_check": follower.last_check, **served.info}

    @app.get("/health")
    async def health():
        served = follower.served
        # Still serving either way; "degraded" when the alias could not be read last time,
        # with the reason and its fix in last_check.
        status = "ok" if follower.last_check.get("ok") else "degraded"
        return JSONResponse({"status": status, "version": served.version,
                             "last_check": follower.last_check})

    @app.get("/model-info")
    async def model_info():
        return JSONResponse(_info(follower.served))

    @app.post("/reload")
    async def reload():
        checked = await asyncio.to_thread(follower.check)
        return JSONResponse(_info(follower.served), status_code=200 if checked["ok"] else 503)

    async def predict(request: Request):
        served = follower.served  # read once: the whole request is answered by this version
        data = await request.body()
        content_type = request.headers.get("content-type") or "application/json"
        version = {"X-Model-Version": served.version}
        try:
            result = await asyncio.to_thread(invocations, data, content_type, served.model,
                                             served.model.metadata.get_input_schema())
        except MlflowException as refused:  # input the signature refuses: as MLflow answers
            return Response(content=refused.serialize_as_json(),
                            status_code=refused.get_http_status_code(),
                            media_type="application/json", headers=version)
        return Response(content=result.response, status_code=result.status,
                        media_type=result.mimetype, headers=version)

    app.post("/predict")(predict)
    # MLflow's scoring server's path, so its clients need only the new address.
    app.post("/invocations")(predict)
    return app


def check_address(host: str, port: int) -> None:
    """Refuse, in one line, an address the endpoint could not listen on: found before the
    model is loaded, not by uvicorn after it."""
    import errno
    import socket

    from retraining.errors import UsageError

    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise UsageError(f"--serve-host {host!r} is not an address this machine knows "
                         f"({error.strerror})",
                         fix="give --serve-host an address of this machine, such as "
                             "127.0.0.1") from None
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            taken = error.errno == errno.EADDRINUSE
            raise UsageError(f"cannot listen on {host}:{port}: {error.strerror}",
                             fix="choose another --serve-port, or stop what listens there"
                                 if taken else "give --serve-host an address of this "
                                               "machine, such as 127.0.0.1") from None


def serve(settings: Settings) -> dict[str, Any]:
    """Serve until SIGTERM or SIGINT; returns what was served last."""
    import uvicorn

    from retraining.errors import Interrupted

    check_address(settings.serve_host, settings.serve_port)
    follower, stop = None, threading.Event()
    try:
        follower = AliasFollower(settings)
        threading.Thread(target=follower.follow, args=(stop,), name="alias-follower",
                         daemon=True).start()
        server = uvicorn.Server(uvicorn.Config(create_app(follower), host=settings.serve_host,
                                               port=settings.serve_port, log_level="warning",
                                               access_log=False))
        log.info("serving %s@%s (version %s) on http://%s:%d, checking the alias every %g s",
                 settings.model_name, settings.alias, follower.served.version,
                 settings.serve_host, settings.serve_port, settings.alias_check_seconds)
        server.run()
    except Interrupted as asked:
        # While the model loads, or after uvicorn's graceful shutdown, which raises the
        # signal again for the handler before it: the stop a service manager asks for.
        log.info("stopped by %s", asked.signal_name)
    finally:
        stop.set()
    return {"outcome": "stopped", "version": follower.served.version if follower else None}
