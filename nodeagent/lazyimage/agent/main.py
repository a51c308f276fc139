"""``lazyimage-agent``: the node agent.

It mounts one FUSE filesystem under ``<state-dir>/mnt``, where each remote layer is a
subdirectory, keeps the verified chunk cache under ``<state-dir>/cache``, serves containerd's
snapshotter API on ``--socket`` (snapshots under ``<state-dir>/snapshotter``), and serves
/metrics, /healthz, /readyz and /status on ``--listen`` (the control API only on
``--control-socket``). SIGTERM or SIGINT stops it cleanly; the mount stays with the FUSE
holder for the next agent (``lazyimage.holder``), unless ``--no-fuse-holder``.
"""

from __future__ import annotations

import resource
import signal
import sys
from collections.abc import Sequence

import structlog
import trio

from lazyimage import errors, exitcodes, metrics
from lazyimage.agent.config import AgentConfig, parse_config
from lazyimage.agent.control import AgentControl
from lazyimage.agent.http import AgentHTTPServer
from lazyimage.agent.layers import LayerManager
from lazyimage.agent.memory import tune_malloc
from lazyimage.agent.mountbook import MountBook
from lazyimage.agent.orders import OrderRunner
from lazyimage.agent.prewarm import ImagePrewarmer
from lazyimage.agent.profiles import ProfileBook
from lazyimage.agent.pullsecrets import PullSecrets, dockerconfigjson
from lazyimage.agent.remote import AgentRemoteFS
from lazyimage.cache import ChunkCache, TOCStore
from lazyimage.fetch import (
    CacheWriter,
    FetchConfig,
    PriorityGate,
    TokenBucket,
    read_retry_policy,
)
from lazyimage.fusefs import FuseSession, LayerFilesystem
from lazyimage.kube import KubeClient, KubeConfig, NotFoundError, ResourcePath
from lazyimage.logs import configure_logging
from lazyimage.registry import CredentialStore, DockerConfigFile, RegistryClient, RegistryHosts
from lazyimage.snapshotter import CriImageService, Snapshotter
from lazyimage.snapshotter import serve as serve_snapshots

__all__ = ["main", "serve"]

log = structlog.get_logger(__name__)

# Pauses before the order follower starts again after a failure, doubling up to the cap.
_RESTART_PAUSE = 1.0
_RESTART_PAUSE_MAX = 30.0
# How often the pull secrets that orders named are read again by name, so that a deleted or
# changed one is noticed even while the registry still accepts its old credentials.
_SECRET_RECHECK = 300.0


async def serve(config: AgentConfig) -> None:
    for directory in (config.state_dir, config.cache_dir, config.socket.parent):
        directory.mkdir(parents=True, exist_ok=True)
    # The node's own credentials serve every repository; pull secrets, only their orders'.
    credentials = CredentialStore(DockerConfigFile(config.docker_config))
    cache = await trio.to_thread.run_sync(ChunkCache, config.cache_dir, config.cache_size)
    fs = LayerFilesystem()
    # One of each for the process, shared by every layer's fetcher: the gate lets demand on
    # any layer hold back prefetch on all of them, the bucket caps their prefetch bandwidth,
    # and the writer's threads do the cache writes that readers do not wait for.
    gate = PriorityGate()
    bucket = TokenBucket(config.prefetch_bandwidth or None, burst=4 << 20)
    writer = CacheWriter()
    fetch_config = FetchConfig(
        stall_timeout=config.stall_timeout, background_quiet=config.background_quiet
    )
    holder = config.holder_socket if config.fuse_holder else None
    images = None
    if config.cri_socket is not None:
        images = CriImageService(config.cri_socket, config.cri_runtime_handler)
    with (
        cache,
        FuseSession(
            config.mountpoint, fs, holder=holder, holder_cgroup=config.fuse_holder_cgroup
        ) as session,
    ):
        async with (
            RegistryClient(
                credentials=credentials,
                retry=read_retry_policy(fetch_config),
                insecure_registries=config.insecure_registries,
                # A bad hosts.toml is logged and skipped: it must not stop the agent.
                hosts=RegistryHosts(config.registry_config) if config.registry_config else None,
            ) as client,
            trio.open_nursery() as nursery,
        ):
            manager = LayerManager(
                fs,
                client,
                cache,
                nursery,
                gate=gate,
                writer=writer,
                fetch_config=fetch_config,
                bucket=bucket,
                background_fill=config.background_fill,
                tocs=TOCStore(config.tocs_dir),
                book=MountBook(config.mount_book),
            )
            # A mount taken over from an earlier agent serves its layers again, in their
            # inode slots, before it answers the requests that waited in the kernel.
            if session.adopted:
                taken_over = await manager.take_over()
                log.info("mount_taken_over", layers=taken_over)
            else:
                await manager.clear_book()
            token = trio.lowlevel.current_trio_token()
            control = AgentControl(
                manager,
                cache,
                str(config.mountpoint),
                ImagePrewarmer(manager, client, images=images),
            )
            http = AgentHTTPServer(
                config.listen, control, token, control_socket=config.control_socket
            )
            await nursery.start(session.serve)
            http.start()
            snapshotter = Snapshotter(config.snapshotter_dir, remote=AgentRemoteFS(manager, token))
            # Layers of snapshots made before a restart are mounted again before containerd
            # may ask for them; one that cannot be is reported and does not stop the rest.
            failed = await trio.to_thread.run_sync(snapshotter.restore)
            if session.adopted:
                await manager.settle_take_over()
            grpc_server = serve_snapshots(snapshotter, config.socket)
            if config.node_name:
                await nursery.start(follow_orders, config, manager, client, cache, images)
            control.is_ready = True
            log.info(
                "agent_ready",
                listen=http.address,
                socket=str(config.socket),
                mountpoint=str(config.mountpoint),
                unrestored=len(failed),
            )
            try:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("agent_stopping", signal=signal.Signals(signum).name)
                        break
            finally:
                control.is_ready = False
                await trio.to_thread.run_sync(grpc_server.stop, 5.0)
                snapshotter.close()
                http.stop()
                session.terminate()
                if images is not None:
                    images.close()
                nursery.cancel_scope.cancel()


async def follow_orders(
    config: AgentConfig,
    manager: LayerManager,
    client: RegistryClient,
    cache: ChunkCache,
    images: CriImageService | None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Carry out the operator's prefetch orders for ``config.node_name`` until cancelled.

    The follower runs in the agent's own nursery, beside the FUSE session, so it is
    supervised: whatever ends it (a bug, an API server gone for good) is logged, counted,
    and it starts again after a pause. A bad kubeconfig still stops the agent at start.
    """
    assert config.node_name is not None
    kube_config = await KubeConfig.load_async(config.kubeconfig)
    secret_reader = _SecretReader()
    secrets = PullSecrets(client.credentials, secret_reader.load)
    prewarmer = ImagePrewarmer(manager, client, secrets, images)
    profiles = ProfileBook(config.profile_window) if config.profile_window > 0 else None

    def cache_usage() -> tuple[int, int]:
        stats = cache.stats()
        return stats.bytes, stats.capacity

    pause = _RESTART_PAUSE
    while True:
        started = trio.current_time()
        try:
            async with KubeClient(kube_config) as kube, trio.open_nursery() as beside:
                # Until the follower ends: a registry refusal may re-read a secret any time.
                secret_reader.kube = kube
                beside.start_soon(secrets.recheck_forever, _SECRET_RECHECK)
                runner = OrderRunner(
                    kube,
                    config.node_name,
                    prewarmer,
                    cache_counts=manager.cache_counts,
                    cache_usage=cache_usage,
                    heartbeat=config.report_interval,
                    profiles=profiles,
                    mounted=manager.all,
                )
                log.info("following_orders", node=config.node_name, server=kube.config.server)
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                await runner.run()
                beside.cancel_scope.cancel()
            log.warning("order_follower_ended", restart_in=pause)
        except Exception:
            log.exception("order_follower_failed", restart_in=pause)
        finally:
            secret_reader.kube = None  # closed; reads fail cleanly until the next one
        metrics.ORDER_RUNNER_RESTARTS.inc()
        await trio.sleep(pause)
        # A follower that ran a while before failing starts the backoff over.
        long_run = trio.current_time() - started > _RESTART_PAUSE_MAX
        pause = _RESTART_PAUSE if long_run else min(pause * 2, _RESTART_PAUSE_MAX)


class _SecretReader:
    """Reads an order's pull secrets by name (never a list or a watch) through the current
    API server client; None for a secret that does not exist."""

    kube: KubeClient | None = None

    async def load(self, namespace: str, name: str) -> bytes | None:
        if self.kube is None:
            raise errors.LazyImageError(f"pull secret {namespace}/{name}: no API server client")
        try:
            secret = await self.kube.get(ResourcePath("", "v1", "secrets", namespace), name)
        except NotFoundError:
            return None
        return dockerconfigjson(secret, namespace, name)


def _raise_open_files_limit() -> None:
    """Raise the soft limit on open fds to the hard one, as Go programs do at start: the
    chunk cache keeps a share of it open (1024, the usual soft limit, would give it 256)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.warning("open_files_limit_kept", soft=soft, hard=hard, error=str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent; the exit code says how it ended (README, "The node agent")."""
    config = parse_config(argv)  # a bad flag or LAZYIMAGE_* variable exits here with 2
    configure_logging(config.log_level)
    _raise_open_files_limit()
    if not tune_malloc():
        log.info("malloc_defaults_kept")
    try:
        trio.run(serve, config)
    except Exception as exc:  # the last line of defence: a message, never a bare traceback
        code = exitcodes.exit_code_for(exc)
        if code == exitcodes.INTERNAL:
            log.exception("agent_failed")
        else:
            log.error("agent_failed", error=exitcodes.error_message(exc), exit_code=code)
        return code
    log.info("agent_stopped")
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
