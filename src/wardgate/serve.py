"""`wardgate serve`: one supervisor, N identical worker processes sharing the listeners
(SO_REUSEPORT) and the store; no state shared through memory."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wardgate.config import Config, ConfigError, load_config
from wardgate.logs import FORMAT_ENV, setup_logging

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from fastapi import FastAPI

    from wardgate.audit.keeper import ChainKeeper
    from wardgate.core.services import Services
    from wardgate.ddl_board import DdlBoard

log = logging.getLogger("wardgate")

# Cancel keys older than this are dropped at start. Sessions of this gateway died with its
# last run; another replica sharing the store loses CancelRequest for sessions this old.
_CANCEL_KEY_MAX_AGE = 30 * 24 * 3600.0
# How long a stopping worker waits for the store to take its last audit records.
_RECORDER_CLOSE_TIMEOUT = 15.0


def _run_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main())
    else:
        uvloop.run(main())


def _freeze_startup_heap() -> None:
    """Move what the worker built to start (modules, config, the parser, the app: about
    140,000 objects) out of the cyclic collector's sight. They live as long as the
    worker, and each full collection walked them all: about 90 ms each, several times
    a minute under load, about 5 µs per relayed statement (gc.callbacks, pgbench -S)."""
    gc.collect()
    gc.freeze()


def pidfile(config: Config) -> Path:
    """Where `wardgate serve` keeps the pid that `wardgate policy reload` sends SIGHUP to."""
    return config.data_path / "wardgate.pid"


def _write_pidfile(config: Config) -> Path:
    path = pidfile(config)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written whole then renamed: a reader never sees half a number.
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(f"{os.getpid()}\n")
    os.replace(partial, path)
    return path


def _remove_pidfile(path: Path) -> None:
    # Only our own: another gateway on the same data_dir may have written its pid since.
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass


def gateway_id(config: Config) -> str:
    """This gateway instance's id, kept in data_dir: the same across restarts, so a
    restart finds the sessions and cancel keys its crashed run left (one gateway per
    data_dir, as the pidfile already assumes)."""
    path = config.data_path / "gateway_id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(f"g_{os.urandom(8).hex()}\n")
    os.replace(partial, path)
    return path.read_text().strip()


def run(config_path: str) -> None:
    setup_logging()
    config = load_config(config_path)
    # The recorder's writer and the workers inherit the format through the environment.
    os.environ[FORMAT_ENV] = config.log.format
    setup_logging(config.log.format)
    # Before anything imports prometheus_client: where worker values live is fixed then.
    metrics_dir = _metrics_dir(config)
    from wardgate.audit.recovery import close_interrupted, replay_journals
    from wardgate.store.cancel import CancelKeys
    from wardgate.store.db import Store

    # Migrate once, before any worker starts, so workers never race on the schema.
    store = Store.open(config.store_url)
    # What an earlier run of this gateway left behind if it crashed: its open sessions
    # (closed as interrupted) and their cancel keys. Older keys (before instances were
    # named, or of replicas gone for good) go after 30 days.
    gateway = gateway_id(config)
    # First what the journals of the last run hold that the store may not (a crash),
    # then the sessions that run never closed.
    replayed = replay_journals(store, config.data_path / "journal")
    if replayed:
        log.warning("wrote %d audit records from the journal of an earlier run", replayed)
    interrupted = close_interrupted(store, gateway)
    cancel_keys = CancelKeys(store)
    stale_keys = cancel_keys.purge_gateway(gateway)
    if interrupted or stale_keys:
        log.warning(
            "an earlier run of this gateway stopped without closing its sessions: %d "
            "closed as interrupted, %d cancel keys removed",
            interrupted,
            stale_keys,
        )
    cancel_keys.purge_older_than(_CANCEL_KEY_MAX_AGE)
    from wardgate.vault.keys import load_master_key

    master = load_master_key(config)  # generate the key file now, not in N workers at once
    from wardgate.vault.secrets import Vault

    if config.audit.checkpoint is not None:
        checkpoint_key(config, Vault(store, master))  # a bad key stops serve here, not in a worker
    _end_earlier_backends(config, Vault(store, master))
    del master
    store.dispose()
    if config.listen_address("ssh") is not None:
        from wardgate.ssh.upstream import gateway_host_key

        gateway_host_key(config)  # likewise the SSH host key
    # SIGHUP means "reload" once the handlers are in place; until then it must not end
    # the gateway (its default action), so an early `wardgate policy reload` is ignored.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # The pid to signal: this process, whether it serves itself or supervises workers.
    pid_path = _write_pidfile(config)
    try:
        if config.workers == 1:
            _run_loop(lambda: run_worker(config_path, config, reuse_port=False, index=0))
            return
        _supervise(config_path, config)
    finally:
        _remove_pidfile(pid_path)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _end_earlier_backends(config: Config, vault: Any) -> None:
    """The server sessions an earlier run of this gateway left open when it crashed
    (their workers' ledgers, postgres/backends.py) may still run statements it judged
    against the catalogue of then; they are ended before any worker judges a statement.
    Bounded by ``limits.connect_timeout``: a server that cannot be reached, or a
    backend that will not end, is logged as an error, and the gateway starts."""
    from wardgate.postgres.backends import end_backends, read_ledger

    found = [b for path in sorted(config.data_path.glob("backends/w*")) for b in read_ledger(path)]
    if not found:
        return
    log.warning(
        "an earlier run of this gateway left %d server session(s) open; ending them first",
        len(found),
    )

    class _Credentials:
        def __init__(self) -> None:
            self.config, self.vault = config, vault

    async def end() -> None:
        await asyncio.wait_for(
            end_backends(_Credentials(), found, "the earlier run"),
            config.limits.connect_timeout,
        )

    try:
        asyncio.run(end())
    except TimeoutError:
        log.error(
            "server sessions of an earlier run of this gateway could not all be ended in "
            "%g s (see the warnings above); statements they still run were judged against "
            "the catalogue of then, and a DDL commit through this run does not wait for them",
            config.limits.connect_timeout,
        )


def _metrics_dir(config: Config) -> str | None:
    """With several workers (or when the operator set ``PROMETHEUS_MULTIPROC_DIR``), a
    fresh per-run directory where every worker writes its metric values, so /metrics
    adds them up (prometheus_client's multiprocess mode); None for one plain process."""
    parent = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
    if config.workers == 1 and parent is None:
        return None
    if parent is not None:
        os.makedirs(parent, exist_ok=True)
    path = tempfile.mkdtemp(prefix="wardgate-metrics-", dir=parent)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    # Imported once here, in multiprocess mode, instead of in each forked worker.
    import prometheus_client  # noqa: F401

    return path


def _supervise(config_path: str, config: Config) -> None:
    from wardgate.ddl_board import DdlBoard

    children: list[int] = []
    board = DdlBoard(config.workers)  # shared by the workers forked below
    for index in range(config.workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _run_loop(functools.partial(_worker_main, config_path, config, index, board))
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            os._exit(code)
        children.append(pid)
    log.info("supervising %d workers: %s", len(children), children)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    status = 0
    running = set(children)
    while running:
        # Any child: as a container's PID 1 this process also inherits orphans (a dead
        # worker's recorder process) and must reap them.
        try:
            pid, code = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid in running:
            running.discard(pid)
            _worker_exited(pid)
            board.worker_gone(children.index(pid))
            if code:
                status = 1
    sys.exit(status)


def _worker_exited(pid: int) -> None:
    """A dead worker's live gauges (sessions open, recorder queue) stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Not wardgate.metrics: the supervisor itself keeps no metric values.
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _worker_main(
    config_path: str, config: Config, index: int, board: DdlBoard
) -> Coroutine[Any, Any, None]:
    return run_worker(config_path, config, reuse_port=True, index=index, board=board)


async def run_worker(
    config_path: str,
    config: Config,
    *,
    reuse_port: bool,
    index: int,
    board: DdlBoard | None = None,
) -> None:
    """One worker; ``board``: DDL as the other workers report it (ddl_board.py)."""
    from wardgate.audit.journal import Journal
    from wardgate.audit.recorder import Recorder
    from wardgate.core.services import Services
    from wardgate.core.tls import server_context
    from wardgate.core.web_sessions import WebSessions
    from wardgate.gate import Gate
    from wardgate.identity.passwords import UserPasswords
    from wardgate.identity.ratelimit import LoginLimiter
    from wardgate.identity.tokens import TokenService
    from wardgate.lifecycle import Drainable, drain
    from wardgate.metrics import RecordObserver, login_failed
    from wardgate.policy.mask_rules import MaskingPolicy
    from wardgate.postgres import backends
    from wardgate.postgres.listener import PgListener
    from wardgate.store.cancel import CancelKeys
    from wardgate.store.db import Store
    from wardgate.telemetry import setup_tracing, stop_tracing
    from wardgate.vault.keyring import Keyring
    from wardgate.vault.keys import load_master_key, web_key
    from wardgate.vault.secrets import Vault, resolve_secret

    store = Store(config.store_url)
    master = load_master_key(config)
    vault = Vault(store, master)
    keyring = Keyring(store, master)
    mask_key = (
        resolve_secret(config.masking.key, vault, base_dir=Path(config.base_dir)).encode()
        if config.masking.key
        else keyring.masking_key()
    )
    # Audit writing runs in its own process: JSON, hashing and SQL off this GIL.
    observer = RecordObserver()
    gateway = gateway_id(config)
    # This worker's journal (audit.journal); `run` replayed and emptied it before.
    journal = Journal(
        config.data_path / "journal" / f"w{index}",
        sync_process=True,
        sync_interval=config.audit.journal_sync_ms / 1000,
    )
    journal.open()
    # The server sessions this worker opens, for the others should it die (backends.py).
    backends.ledger = backends.BackendLedger(backends.ledger_path(config.data_path, index))
    backends.ledger.open()
    recorder = Recorder(
        store,
        high_water=config.limits.audit_backlog,
        process=True,
        observer=observer,
        gateway=gateway,
        journal=journal,
    )
    await recorder.start()
    gate = Gate(config)
    if board is not None:
        board.index = index
        gate.facts.board = board
    services = Services(
        config=config,
        gate=gate,
        store=store,
        recorder=recorder,
        tokens=TokenService(store, keyring.token_pepper()),
        limiter=LoginLimiter(
            store,
            config.limits.login_failures,
            config.limits.login_window,
            login_failed,
            address_failures=config.limits.address_failures,
            max_delay=config.limits.login_max_delay,
        ),
        cancel_keys=CancelKeys(store, gateway),
        vault=vault,
        server_tls=server_context(config),
        masking_key=mask_key,
        masking=MaskingPolicy(config, mask_key),
        passwords=UserPasswords(store),
        web_sessions=WebSessions(store, config.web.session_idle, config.web.session_max),
        web_key=web_key(master),
    )
    if board is not None:
        from wardgate.postgres.commit_barrier import CommitBarrier

        services.state(CommitBarrier).serve(services, board)
    if config.web.oidc is not None:
        from wardgate.identity.oidc import OidcClient

        secret = config.web.oidc.client_secret
        services.oidc = OidcClient(
            config.web.oidc,
            resolve_secret(secret, vault, base_dir=Path(config.base_dir)) if secret else None,
        )
    del master
    # One process signs the shared chain head (the key comes from outside the store)
    # and copies new events outside the store.
    keeper = _chain_keeper(config, store, vault) if index == 0 else None
    if keeper is not None:
        services.tasks.spawn(keeper.run(), name="audit-checkpoints", until_cancelled=True)
    if index == 0:
        # The sweeper signs the head after a sweep: a retention.swept event no signed
        # checkpoint covers does not excuse deleted events (audit/retention.py).
        sweep_key = checkpoint_key(config, vault)
        services.tasks.spawn(
            _retention_sweeper(services, sweep_key), name="audit-retention", until_cancelled=True
        )
    tracing = setup_tracing(observer, f"worker-{index}")
    notifier = await _start_reviews(services, index)
    stop, hurry = asyncio.Event(), asyncio.Event()

    def stopping() -> None:
        # The first SIGTERM/SIGINT drains; a second one cuts the drain short.
        (hurry if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping)
    loop.add_signal_handler(signal.SIGINT, stopping)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(services, config_path))

    pg: PgListener | None = None
    ssh: Any = None
    api_server: Any = None
    kube_server: Any = None
    try:
        serves_mcp = index == 0 and config.listen_address("api") is not None
        if config.listen_address("postgres") is not None or serves_mcp:
            # What the gate knows of the targets' user code (casts, shadowing routines):
            # wherever statements are judged, PostgreSQL clients' and MCP queries'. Also
            # with no PostgreSQL connection configured yet: a reload may add one, which
            # must not be judged as having no user code (attack14g). Before any listener
            # accepts: a session judged before the watch runs would be judged as having
            # no user code rather than as unread.
            from wardgate.postgres.catalog_watch import CatalogWatch

            catalog_watch = services.state(CatalogWatch)
            catalog_watch.running = True
            services.gate.facts.watch()
            watch = catalog_watch.run(services, loud=index == 0)
            services.tasks.spawn(watch, name="catalog-watch", until_cancelled=True)
        if (addr := config.listen_address("postgres")) is not None:
            pg = PgListener(services)
            await pg.start(addr[0], addr[1], reuse_port=reuse_port)
            log.info("worker %d: PostgreSQL listener on %s:%d", index, addr[0], pg.port)
            if index == 0:
                from wardgate.postgres.privileges import warn_privileged_upstreams

                services.tasks.spawn(warn_privileged_upstreams(services), name="upstream-roles")
        if (ssh_addr := config.listen_address("ssh")) is not None:
            from wardgate.ssh.server import SshListener

            ssh = SshListener(services)
            await ssh.start(ssh_addr[0], ssh_addr[1], reuse_port=reuse_port)
            log.info("worker %d: SSH listener on %s:%d", index, ssh_addr[0], ssh.port)
        services.lifecycle.listening.update(
            {name: True for name, up in (("postgres", pg), ("ssh", ssh)) if up is not None}
        )
        if index == 0 and (api_addr := config.listen_address("api")) is not None:
            import uvicorn

            _ApiServer = _api_server_class()

            api_app = http_app(services)
            api_server = _ApiServer(
                uvicorn.Config(
                    api_app,
                    host=api_addr[0],
                    port=api_addr[1],
                    log_level="warning",
                    log_config=None,  # uvicorn's lines go through wardgate's handler
                    lifespan="off",
                )
            )
            services.tasks.spawn(api_server.serve(), name="api-server")
            services.tasks.spawn(api_app.state.mcp.run(), name="mcp-sessions", until_cancelled=True)
            log.info("worker %d: API on http://%s:%d", index, api_addr[0], api_addr[1])
        if index == 0 and (kube_addr := config.listen_address("kubernetes")) is not None:
            from wardgate.kubernetes.listener import kubernetes_server

            kube_server = kubernetes_server(services, kube_addr, _api_server_class())
            services.tasks.spawn(kube_server.serve(), name="kubernetes-server")
            log.info("worker %d: Kubernetes on https://%s:%d/k8s/", index, *kube_addr)
        _freeze_startup_heap()
        await stop.wait()
        log.info("worker %d: draining", index)
        listeners: list[tuple[str, Drainable]] = [
            (name, listener) for name, listener in (("postgres", pg), ("ssh", ssh)) if listener
        ]
        await drain(services.lifecycle, listeners, services.config.limits.drain_timeout, hurry)
        log.info("worker %d: shutting down", index)
    finally:
        if api_server is not None:
            api_server.should_exit = True
        if kube_server is not None:
            kube_server.should_exit = True
        # Order matters: closing sessions submits their end records and starts their
        # cancel-key cleanups; those finish (or are cancelled) before the recorder
        # writes its last batch, so nothing is submitted to a closed recorder.
        if pg is not None:
            await pg.close()
        if ssh is not None:
            await ssh.close()
        await services.tasks.cancel_all(grace=2.0)
        await notifier.close(grace=3.0)
        if services.oidc is not None:
            await services.oidc.aclose()
        try:
            async with asyncio.timeout(_RECORDER_CLOSE_TIMEOUT):
                await recorder.close()
        except TimeoutError:
            log.error(
                "worker %d: the store did not take the last audit records in time; they "
                "stay in the journal and are written at the next start",
                index,
            )
        if keeper is not None:
            await keeper.final()  # copy and sign the chain as this gateway leaves it
        journal.close()
        backends.ledger.close()
        backends.ledger = None
        if tracing is not None:
            stop_tracing(tracing)
        store.dispose()


def checkpoint_key(config: Config, vault: Any) -> Ed25519PrivateKey | None:
    """The audit checkpoint signing key (``audit.checkpoint.key``), or None when
    checkpoints are off. Raises SecretError or CheckpointError, phrased for the user."""
    if config.audit.checkpoint is None:
        return None
    from wardgate.audit.checkpoint import load_private_key
    from wardgate.vault.secrets import resolve_secret

    ref = config.audit.checkpoint.key
    return load_private_key(resolve_secret(ref, vault, base_dir=Path(config.base_dir)))


RETENTION_SWEEP_INTERVAL = 3600.0


async def _retention_sweeper(services: Services, key: Ed25519PrivateKey | None) -> None:
    """Hourly (and at start): every connection's records past ``retention_days`` leave
    the store, each batch recorded in the chain (audit/retention.py). Reads the live
    configuration, so a reload changes what is kept."""
    from wardgate.audit.retention import sweep

    while True:
        config = services.config
        if any(c.retention_days for c in config.connections.values()):
            try:
                done = await asyncio.to_thread(sweep, services.store, config, key=key)
            except Exception as exc:  # the store being down: try again next time
                log.warning("retention sweep failed: %s", exc)
            else:
                for name, count in done.items():
                    if count:
                        log.info("retention: %d events of connection %s swept", count, name)
        await asyncio.sleep(RETENTION_SWEEP_INTERVAL)


def _chain_keeper(config: Config, store: Any, vault: Any) -> ChainKeeper | None:
    """Signed checkpoints and the copy outside the store, if either is configured."""
    key = checkpoint_key(config, vault)
    sink_config = config.audit.sink
    if key is None and sink_config is None:
        return None
    from wardgate.audit.keeper import ChainKeeper
    from wardgate.audit.sink import Sink

    sink = None
    if sink_config is not None:
        path = config.path(sink_config.file) if sink_config.file else None
        sink = Sink(path, sink_config.syslog, sink_config.syslog_facility)
    cp = config.audit.checkpoint
    return ChainKeeper(
        store,
        key=key,
        checkpoint_interval=cp.interval if cp is not None else 300.0,
        sink=sink,
        sink_interval=sink_config.interval if sink_config is not None else 1.0,
    )


def http_app(services: Services) -> FastAPI:
    """The app on the API port: the REST API, and the MCP endpoint and the web UI that
    build on it (the API imports neither)."""
    from starlette.routing import Route

    from wardgate.api.app import create_app
    from wardgate.integrations.mcp_server import McpGateway
    from wardgate.web import mount_ui

    app = create_app(services)
    mcp = McpGateway(services)
    app.state.mcp = mcp
    # A raw ASGI route (not a mount): clients POST to /mcp itself, no redirect.
    app.router.routes.append(Route("/mcp", endpoint=mcp, include_in_schema=False))
    mount_ui(app)
    return app


def _api_server_class() -> type[Any]:
    import uvicorn

    class ApiServer(uvicorn.Server):
        """uvicorn, minus its signal handling: SIGTERM belongs to the worker, which keeps
        the API up while it drains (/readyz says so) and stops it afterwards. uvicorn's
        own handlers would stop the API at once and raise the signal again on exit."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return ApiServer


async def _start_reviews(services: Any, index: int) -> Any:
    """The review service of this process: waiting, grants, previews, proposals, notices."""
    from wardgate.metrics import review_event
    from wardgate.postgres.reviews import register
    from wardgate.reviews.notify import Notifier
    from wardgate.reviews.service import ReviewService
    from wardgate.reviews.waiting import ReviewRuntime

    service = ReviewService(services.store, lambda: services.config)
    service.listeners.append(review_event)
    runtime = ReviewRuntime(
        services.store, service, lambda: services.config, services.tasks, housekeeping=index == 0
    )
    register(services, service, runtime)
    from wardgate.kubernetes.preview import register as register_kubernetes
    from wardgate.kubernetes.proposals import register as register_kube_proposals

    register_kubernetes(services, service, runtime)
    register_kube_proposals(services, service, runtime)
    notifier = Notifier(lambda: services.config, services.vault)
    service.listeners.append(notifier.listener)
    await notifier.start()
    services.reviews = runtime
    await runtime.start()
    return notifier


def _reload(services: Any, config_path: str) -> None:
    try:
        new = load_config(config_path)
    except ConfigError as exc:
        log.error("config reload refused, keeping the running policy:\n%s", exc)
        return
    services.reload(new)
    log.info("config reloaded from %s", config_path)
