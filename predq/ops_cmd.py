"""``predq healthcheck ...`` (container health probes) and ``predq demo`` (seed a registry).

They exist so that docker-compose (and Kubernetes probes) run only predq's own commands:
the image needs no curl, and every probe means what /readyz means.
"""

from __future__ import annotations

import socket
import sys
import time

import click

from predq.shared.settings import get_settings


@click.group()
def healthcheck() -> None:
    """Exit 0 when a component is healthy, 1 otherwise (for container health checks)."""


@healthcheck.command("http")
@click.argument("url")
@click.option("--timeout", default=3.0, show_default=True, type=click.FloatRange(min=0.1))
def http_check(url: str, timeout: float) -> None:
    """Healthy when GET URL answers 2xx (e.g. http://127.0.0.1:8000/healthz)."""
    import httpx

    try:
        response = httpx.get(url, timeout=timeout, trust_env=False)
    except httpx.HTTPError as e:
        click.echo(f"unhealthy: {type(e).__name__}: {e}", err=True)
        sys.exit(1)
    if not response.is_success:
        click.echo(f"unhealthy: {url} answered {response.status_code}", err=True)
        sys.exit(1)
    click.echo("ok")


@healthcheck.command("worker")
@click.option("--hostname", "-n", default=None,
              help="The worker's node name [default: celery@<this host>, Celery's default].")
def worker_check(hostname: str | None) -> None:
    """Healthy when this worker's heartbeat in Redis is recent (it is consuming)."""
    from predq.shared.jobstore.keys import WORKER_ALIVE_BEATS, Keys
    from predq.shared.redis_conn import display_url, sync_client

    settings = get_settings()
    name = hostname or f"celery@{socket.gethostname()}"
    client = sync_client(settings, socket_timeout=2, socket_connect_timeout=2)
    try:
        beat = client.zscore(Keys(settings.key_prefix).workers_alive(), name)
    except Exception as e:
        click.echo(f"unhealthy: Redis at {display_url(settings.redis_url)}: "
                   f"{type(e).__name__}: {e}", err=True)
        sys.exit(1)
    finally:
        client.close()
    window = WORKER_ALIVE_BEATS * settings.worker_heartbeat_s
    if beat is None or time.time() - beat > window:
        click.echo(f"unhealthy: no heartbeat from {name} in the last {window:g}s (Redis "
                   f"{display_url(settings.redis_url)}, key prefix {settings.key_prefix})",
                   err=True)
        sys.exit(1)
    click.echo("ok")


@click.command()
def demo() -> None:
    """Register the demo model (iris, alias production) unless the registry has it."""
    from predq.demo import ensure_demo
    from predq.shared.registry.store import Registry

    settings = get_settings()
    manifest = ensure_demo(Registry(settings.registry_root))
    click.echo(f"{manifest.name} v{manifest.version} in {settings.registry_root}")
