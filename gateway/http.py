"""Run the API with uvicorn in a background thread of the service process."""

from __future__ import annotations

import threading
import time

import uvicorn

from config.settings import Settings
from gateway.service import Service


class ApiServer:
    """A uvicorn server on its own thread, stoppable with the rest of the service."""

    def __init__(self, server: uvicorn.Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.run, name="api", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the API server stopped during start-up (port in use?)")
            if time.monotonic() > deadline:
                raise TimeoutError("the API server did not start in time")
            time.sleep(0.05)

    @property
    def port(self) -> int:
        sockets = self._server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def start_api(settings: Settings, service: Service) -> ApiServer:
    """Build the app for this service and serve it on the configured host and port."""
    from api.app import create_app
    from audit.metrics import AuditCollector

    collectors = [AuditCollector(service.audit.trail)] if service.audit is not None else []
    app = create_app(
        settings,
        service.sessions,
        store=service.store,
        predictor=service.predictor,
        collectors=collectors,
    )
    config = uvicorn.Config(
        app, host=settings.api.host, port=settings.api.port, log_level="warning", access_log=False
    )
    server = ApiServer(uvicorn.Server(config))
    server.start()
    return server
