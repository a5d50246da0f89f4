"""Running the server: one process until SIGTERM or SIGINT (:func:`serve`), or
``--workers N`` processes on one port with their metrics aggregated by the parent
(:func:`run_workers`); and the port file that tells a caller the bound ports."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
from multiprocessing.connection import wait
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from lstm_serve.metrics import multiprocess_registry, serve_metrics
from lstm_serve.providers import ProviderError
from lstm_serve.server import LstmServer, metrics_tls
from lstm_serve.settings import Settings


def write_port_file(path: str, port: int, metrics_port: int | None, health_port: int | None = None) -> None:
    """Write the bound ports to ``path`` as one JSON line: by an atomic rename for a
    regular file, or straight into an existing pipe or device (``/dev/fd/N``)."""
    ports = {"port": port, "metrics_port": metrics_port}
    if health_port is not None:
        ports["health_port"] = health_port
    line = json.dumps(ports) + "\n"
    target = Path(path)
    if target.exists() and not stat.S_ISREG(target.stat().st_mode):
        with target.open("w") as pipe:
            pipe.write(line)
        return
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(line)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


async def serve(settings: Settings, port_file: str | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain. With ``port_file``, write the bound
    ports there once the server is listening."""
    server = LstmServer(settings)
    await server.start()
    if port_file is not None:
        write_port_file(
            port_file, server.port, server.metrics_port if settings.metrics.enabled else None, server.health_port
        )
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        if not stopping:
            logging.getLogger("lstm_serve").info("received %s", signal.Signals(signum).name)
            stopping.append(loop.create_task(server.stop()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await server.wait_stopped()


def _worker(settings_json: str) -> None:
    """Entry point of one worker process (``--workers N``)."""
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings)
    try:
        asyncio.run(serve(settings))
    except ProviderError as exc:
        logging.getLogger("lstm_serve").error("%s", exc)
        sys.exit(2)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_workers(settings: Settings, port_file: str | None = None) -> int:
    """Run ``settings.server.workers`` server processes on one port and serve their
    aggregated metrics from this process until SIGTERM/SIGINT. With ``port_file``, write
    the port (chosen here when it is 0) and the metrics port there once the workers are
    started; they are listening when health says SERVING."""
    log = logging.getLogger("lstm_serve")
    metrics_dir = tempfile.mkdtemp(prefix="lstm-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    port = settings.server.port or _free_port(settings.server.host)
    worker_settings = settings.model_copy(
        update={
            "server": settings.server.model_copy(update={"port": port}),
            "metrics": settings.metrics.model_copy(update={"enabled": False}),
        }
    )
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(worker_settings.model_dump_json(),), name=f"lstm-serve-worker-{i}")
        for i in range(settings.server.workers)
    ]
    for worker in workers:
        worker.start()
    log.info("started %d workers on port %d: pids %s", len(workers), port, [w.pid for w in workers])
    endpoint = (
        serve_metrics(
            multiprocess_registry(metrics_dir), settings.metrics_host, settings.metrics.port, metrics_tls(settings)
        )
        if settings.metrics.enabled
        else None
    )
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            log.info("received %s: draining %d workers", signal.Signals(signum).name, len(workers))
        stopping = True
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    if port_file is not None:
        try:
            health_port = settings.server.health_port or None  # fixed with workers: they share it
            write_port_file(port_file, port, endpoint.port if endpoint is not None else None, health_port)
        except OSError as exc:
            log.error("cannot write the port file: %s; stopping the workers", exc)
            code = 1
            on_signal(signal.SIGTERM, None)
    alive = list(workers)
    while alive:
        for sentinel in wait([w.sentinel for w in alive]):
            worker = next(w for w in alive if w.sentinel == sentinel)
            worker.join()
            alive.remove(worker)
            if worker.pid is not None:
                mark_process_dead(worker.pid, metrics_dir)
            if not stopping:
                log.error("worker %s exited with %s; stopping the others", worker.pid, worker.exitcode)
                code = 1
                on_signal(signal.SIGTERM, None)
            elif worker.exitcode:
                code = 1
    if endpoint is not None:
        endpoint.close()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("stopped")
    return code


def configure_logging(settings: Settings) -> None:
    """Log at the settings' level, with the process name (workers tell apart)."""
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
