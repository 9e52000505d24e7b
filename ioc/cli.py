"""The `ioc` command line."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import psycopg
import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from ioc import migrate
from ioc.audit import cli_actor
from ioc.catalogue import Profile, bundled_profile_names, load_profile
from ioc.db import libpq_url, redact
from ioc.errors import ConfigError, DatabaseError, IocError
from ioc.keys import create_key, list_keys, replace_named_key, revoke_key
from ioc.logs import configure_logging
from ioc.runtime import Prepared, database, prepare
from ioc.settings import Settings, get_settings
from ioc.vocabulary import Role

if TYPE_CHECKING:
    from alerts.seed import SeedReport

app = typer.Typer(
    help="ioc: engine of a provincial Intelligent Operations Center.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(
    help="Database schema: migrate up or down, show the revision.", no_args_is_help=True
)
profiles_app = typer.Typer(
    help="Province profiles: sectors, metrics, thresholds.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(profiles_app, name="profiles")

console = Console()
err_console = Console(stderr=True)


def _settings() -> Settings:
    settings = get_settings()
    configure_logging(settings.log_level)
    return settings


def _prepare(url: str, settings: Settings, profile: Profile | None = None) -> Prepared[SeedReport]:
    """Start-up as the composition root does it: migrate, sync the profile, then seed the
    profile's alert rules (`alerts.seed`), in one transaction."""
    from alerts.seed import seed_rules

    return prepare(url, settings, profile, then=seed_rules)


# --- db ------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Migrate the database up (default: to head), then sync the profile into it."""
    settings = _settings()
    with database(settings) as url:
        if revision == "head":
            done = _prepare(url, settings)
            rules = done.then
            assert rules is not None
            console.print(
                f"database {redact(url)} at revision [bold]{done.revision}[/]; profile "
                f"[bold]{done.sync.profile}[/]: {done.sync.sectors_written} sector(s) written, "
                f"{done.sync.sectors_deactivated} deactivated; alert rules: "
                f"{rules.inserted} added, {rules.updated} updated, "
                f"{rules.kept_operator_changes} kept as an operator changed them, "
                f"{rules.disabled} disabled"
            )
        else:
            migrate.upgrade(
                url, revision, timescale=settings.timescale, retention_days=settings.retention_days
            )
            console.print(f"database {redact(url)} at revision {migrate.current(url)}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision: an id, -1, or base.")],
) -> None:
    """Migrate the database down to REVISION ('base' drops every ioc table)."""
    settings = _settings()
    with database(settings) as url:
        migrate.downgrade(url, revision)
        console.print(f"database {redact(url)} at revision {migrate.current(url) or 'base'}")


@db_app.command("current")
def db_current() -> None:
    """Print the revision the database is at, and the head revision."""
    settings = _settings()
    with database(settings) as url:
        rev = migrate.current(url)
        head = migrate.head_revision()
        state = "up to date" if rev == head else f"head is {head}"
        console.print(f"{rev or 'base'} ({state})")


# --- profiles ------------------------------------------------------------------------------


@profiles_app.command("list")
def profiles_list() -> None:
    """List the bundled profiles."""
    table = Table("name", "title", "sectors", "metrics", "timezone")
    for name in bundled_profile_names():
        p = load_profile(name)
        table.add_row(
            name,
            p.title_en,
            str(len(p.sectors)),
            str(sum(len(s.metrics) for s in p.sectors)),
            p.timezone,
        )
    console.print(table)


def _threshold_text(profile: Profile, sector_index: int, metric_index: int) -> str:
    metric = profile.sectors[sector_index].metrics[metric_index]
    parts = []
    for t in metric.thresholds:
        sign = {
            ("above", False): ">",
            ("above", True): "≥",
            ("below", False): "<",
            ("below", True): "≤",
        }[(t.direction.value, t.inclusive)]
        held = f" {t.for_s}s" if t.for_s else ""
        parts.append(f"{t.severity.value} {sign}{t.value:g}{held}")
    return ", ".join(parts)


@profiles_app.command("show")
def profiles_show(
    name: Annotated[str, typer.Argument(help="A bundled profile name, or a path to a YAML file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the profile as JSON.")] = False,
) -> None:
    """Show a profile's sectors and metrics."""
    profile = load_profile(name)
    if as_json:
        sys.stdout.write(
            orjson.dumps(profile.to_json_dict(), option=orjson.OPT_INDENT_2).decode() + "\n"
        )
        return
    table = Table(
        "sector",
        "metric",
        "unit",
        "range",
        "every",
        "thresholds",
        title=f"{profile.title_vi} / {profile.title_en} ({profile.timezone})",
    )
    for i, sector in enumerate(profile.sectors):
        for j, metric in enumerate(sector.metrics):
            first = j == 0
            kpi = " ★" if metric.id in sector.kpis else ""
            table.add_row(
                f"[{sector.colour}]■[/] {sector.name_vi}" if first else "",
                f"{metric.id}{kpi}\n[dim]{metric.name_vi}[/]",
                metric.unit,
                f"{metric.min:g}–{metric.max:g}",
                f"{metric.interval_s}s",
                _threshold_text(profile, i, j),
                end_section=j == len(sector.metrics) - 1,
            )
    console.print(table)
    if profile.districts:
        console.print("districts: " + ", ".join(d.name_vi for d in profile.districts))


# --- processes -----------------------------------------------------------------------------


def _exit_on_sigterm() -> None:
    """Make SIGTERM (systemd, docker stop, kill) a clean stop, like Ctrl-C.

    uvicorn shuts down gracefully on SIGTERM and then raises the signal again; without a
    handler that would kill the process before the embedded database and broker are stopped.
    """

    def _stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)


def _hand_over(url: str, mqtt_url: str | None = None) -> None:
    """Pass resolved URLs to the app factory and child processes through the environment."""
    os.environ["IOC_DATABASE_URL"] = url
    if mqtt_url is not None:
        os.environ["IOC_MQTT_URL"] = mqtt_url
    get_settings.cache_clear()


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    with_workers: Annotated[
        bool,
        typer.Option(
            "--with-workers",
            help="Also run the alert sweeper and notifiers, and one ingest worker when "
            "IOC_MQTT_URL is set, in this process.",
        ),
    ] = False,
) -> None:
    """Serve the HTTP API (uvicorn)."""
    import uvicorn

    settings = _settings()
    _exit_on_sigterm()
    with database(settings) as url:
        _prepare(url, settings)
        _hand_over(url)
        stop = threading.Event()
        threads = _start_workers(settings, url, stop) if with_workers else []
        try:
            uvicorn.run(
                "api.app:create_app",
                factory=True,
                host=host or settings.http_host,
                port=port or settings.http_port,
                log_level=settings.log_level.lower(),
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)


def _start_workers(settings: Settings, url: str, stop: threading.Event) -> list[threading.Thread]:
    """The alerts service, and an ingest worker when a broker is configured, as threads."""
    from alerts.service import run_alerts

    threads = [_in_thread("alerts", lambda: run_alerts(settings, database_url=url, stop=stop))]
    if settings.mqtt_url is not None:
        from ingest.worker import run_worker

        mqtt_url = settings.mqtt_url.get_secret_value()
        profile = load_profile(settings.profile)
        threads.append(
            _in_thread(
                "ingest",
                lambda: run_worker(
                    settings, database_url=url, mqtt_url=mqtt_url, profile=profile, stop=stop
                ),
            )
        )
    return threads


DEMO_KEY_NAME = "ioc demo"

keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@contextmanager
def _key_connection(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    with database(settings) as url:
        _prepare(url, settings)
        try:
            with psycopg.connect(libpq_url(url)) as conn:
                yield conn
        except psycopg.Error as exc:
            raise DatabaseError(f"API keys on {redact(url)}: {exc}") from None


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what holds the key.")],
    role: Annotated[Role, typer.Option(help="What the key may do (see README).")],
    sectors: Annotated[
        str, typer.Option(help="Comma-separated sector ids (agency keys: required).")
    ] = "",
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    settings = _settings()
    wanted = [s.strip() for s in sectors.split(",") if s.strip()]
    with _key_connection(settings) as conn:
        key, text = create_key(
            conn,
            name=name,
            role=role,
            sectors=wanted,
            pepper=settings.api_key_pepper.get_secret_value(),
            actor=cli_actor(),
        )
    scope = f" for {', '.join(key.sectors)}" if key.sectors else ""
    err_console.print(
        f"key [bold]{key.prefix}[/] ({key.role.value}{scope}) for {key.name}; "
        "it is shown only now:",
        highlight=False,
    )
    print(text)  # stdout holds the key alone, for scripts


@keys_app.command("list")
def keys_list(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """List API keys (never their secrets)."""
    settings = _settings()
    with _key_connection(settings) as conn:
        keys = list_keys(conn, include_revoked=all_)
    table = Table("prefix", "name", "role", "sectors", "created", "last used", "revoked")
    for k in keys:
        table.add_row(
            k.prefix,
            k.name,
            k.role.value,
            ",".join(k.sectors) or "all",
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (as listed) or the key.")],
) -> None:
    """Revoke an API key; API processes stop accepting it within IOC_API_KEY_CACHE_S."""
    settings = _settings()
    with _key_connection(settings) as conn:
        key = revoke_key(conn, prefix=prefix, actor=cli_actor())
    console.print(f"key {key.prefix} ({key.name}) revoked")


ingest_app = typer.Typer(
    help="Consume MQTT telemetry into the database (IOC_MQTT_URL required).",
    invoke_without_command=True,
)
app.add_typer(ingest_app, name="ingest")


def _ingest_broker(settings: Settings) -> str:
    if settings.mqtt_url is None:
        raise ConfigError("IOC_MQTT_URL is required: the broker to consume from")
    return settings.mqtt_url.get_secret_value()


@ingest_app.callback()
def ingest(
    ctx: typer.Context,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Worker processes (each restarted if it dies).")
    ] = 1,
) -> None:
    """Consume MQTT telemetry into the database: a pool of supervised worker processes."""
    if ctx.invoked_subcommand is not None:
        return
    from ingest.pool import run_pool
    from ingest.worker import assignments_for

    settings = _settings()
    mqtt_url = _ingest_broker(settings)
    profile = load_profile(settings.profile)
    assignments_for(settings, profile, workers)  # a layout that cannot work stops here
    with database(settings) as url:
        _prepare(url, settings, profile)  # the pool migrates and syncs; its workers need not
        _hand_over(url, mqtt_url)
        run_pool(settings, database_url=url, mqtt_url=mqtt_url, profile=profile, workers=workers)


@ingest_app.command("retire")
def ingest_retire(
    client_ids: Annotated[
        list[str],
        typer.Argument(help="Client ids of worker sessions, e.g. ioc-ingest-myhost-1."),
    ],
) -> None:
    """Drain worker sessions' backlog into the database (the normal write path), then end
    the sessions. Stop the `ioc ingest` that uses them first."""
    from ingest.pool import retire
    from ingest.worker import stop_on_signals

    settings = _settings()
    mqtt_url = _ingest_broker(settings)
    profile = load_profile(settings.profile)
    stop = stop_on_signals()
    with database(settings) as url:
        _prepare(url, settings, profile)
        for client_id in client_ids:
            done = retire(
                settings,
                database_url=url,
                mqtt_url=mqtt_url,
                profile=profile,
                client_id=client_id,
                stop=stop,
            )
            if not done.ended:
                raise IocError(f"session {client_id!r} not retired: stopped before it was drained")
            state = "" if done.existed else " (there was no such session)"
            console.print(
                f"{client_id}: {done.messages} message(s) stored or rejected; session ended{state}"
            )


@app.command("alerts")
def alerts_command(
    once: Annotated[bool, typer.Option(help="Sweep once and exit.")] = False,
) -> None:
    """Run the alert sweeper and notifiers (MQTT, webhooks); several may run at once."""
    import threading

    from alerts.sweeper import Sweeper, sweep_config

    settings = _settings()
    _exit_on_sigterm()
    with database(settings) as url:
        _prepare(url, settings)
        sweeper = Sweeper(url, sweep_config(settings), interval_s=settings.alerts_sweep_interval_s)
        stop = threading.Event()
        if once:
            stop.set()
            sweeper.sweep_now()
            report = sweeper.last
            assert report is not None
            console.print(
                f"sweep: {report.silenced} silent source(s), {report.escalated} escalated, "
                f"{report.auto_resolved} auto-resolved"
                + ("" if report.ran else " (another sweeper held the lock)")
            )
            return
        console.print(
            f"alerts: sweeping every {settings.alerts_sweep_interval_s:g} s, notifying "
            f"{len(settings.alerts_webhooks)} webhook(s)"
            + (" and MQTT" if settings.alerts_mqtt and settings.mqtt_url else "")
            + " (Ctrl-C stops)"
        )
        from alerts.service import run_alerts

        # SIGTERM and Ctrl-C end the wait; run_alerts stops its threads on the way out
        run_alerts(settings, database_url=url, stop=stop)


@app.command("simulate")
def simulate(
    profile: Annotated[
        str | None, typer.Option(help="Profile to simulate (default: IOC_PROFILE).")
    ] = None,
    sources: Annotated[int, typer.Option(min=1, help="Number of simulated sources.")] = 50,
    rate: Annotated[float, typer.Option(help="Messages per second, all sources together.")] = 10.0,
    duration: Annotated[
        float | None, typer.Option(help="Seconds to run (default: until Ctrl-C).")
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Samples per message (gateway batch).")] = 1,
    seed: Annotated[int | None, typer.Option(help="Random seed, for a repeatable run.")] = None,
) -> None:
    """Publish realistic telemetry for every sector of a profile (IOC_MQTT_URL required)."""
    from ingest.simulator import SimulationConfig, run_simulation

    settings = _settings()
    if settings.mqtt_url is None:
        raise ConfigError("IOC_MQTT_URL is required: the broker to publish to")
    config = SimulationConfig(
        profile=load_profile(profile or settings.profile),
        sources=sources,
        rate_per_s=rate,
        duration_s=duration,
        batch=batch,
        seed=seed,
        mqtt_protocol=settings.mqtt_protocol,
    )
    stats = run_simulation(
        settings.mqtt_url.get_secret_value(), config, show_progress=True, console=console
    )
    console.print(
        f"published {stats.messages} messages ({stats.readings} readings, "
        f"{stats.bad_messages} deliberately bad) in {stats.elapsed_s:.1f} s, "
        f"{stats.rate_per_s:.1f} msg/s; seed {stats.seed}"
    )


def _in_thread(name: str, target: Callable[[], object]) -> threading.Thread:
    """Run `target` in a daemon thread; an error is logged, not lost."""

    def run() -> None:
        try:
            target()
        except Exception:
            logging.getLogger("ioc.demo").exception("%s stopped with an error", name)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


@app.command("demo")
def demo(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    sources: Annotated[int, typer.Option(min=1, help="Simulated sources.")] = 40,
    rate: Annotated[float, typer.Option(help="Simulated messages per second.")] = 20.0,
) -> None:
    """Run everything on this machine: database, broker, ingest, alerts, simulator and API."""
    import uvicorn

    from ingest.simulator import SimulationConfig, TelemetryPublisher
    from ingest.worker import run_worker
    from ioc.embedded_broker import EmbeddedBroker

    settings = _settings()
    port = port or settings.http_port
    profile = load_profile(settings.profile)
    _exit_on_sigterm()
    _check_port_free(host, port)  # before starting anything: a second demo stops here
    with database(settings) as url:
        done = _prepare(url, settings, profile)
        with psycopg.connect(libpq_url(url)) as conn:
            _, demo_key = replace_named_key(
                conn,
                name=DEMO_KEY_NAME,
                role=Role.ADMIN,
                pepper=settings.api_key_pepper.get_secret_value(),
                actor=cli_actor(),
            )
        broker = None
        mqtt_url = settings.mqtt_url.get_secret_value() if settings.mqtt_url else None
        if mqtt_url is None:
            broker = EmbeddedBroker(settings.data_dir)
            mqtt_url = broker.start()
        if broker is not None and broker.kind == "amqtt":
            settings = settings.model_copy(update={"mqtt_protocol": "3.1.1"})  # no MQTT 5
        stop = threading.Event()
        threads: list[threading.Thread] = []
        try:
            _hand_over(url, mqtt_url)
            os.environ["IOC_MQTT_PROTOCOL"] = settings.mqtt_protocol
            threads.append(
                _in_thread(
                    "ingest",
                    lambda: run_worker(
                        settings, database_url=url, mqtt_url=mqtt_url, profile=profile, stop=stop
                    ),
                )
            )
            simulator = TelemetryPublisher(
                mqtt_url,
                SimulationConfig(
                    profile=profile,
                    sources=sources,
                    rate_per_s=rate,
                    mqtt_protocol=settings.mqtt_protocol,
                ),
                stop=stop,
            )
            threads.insert(0, _in_thread("simulator", simulator.run))
            from pydantic import SecretStr

            from alerts.service import run_alerts

            alert_settings = settings.model_copy(update={"mqtt_url": SecretStr(mqtt_url)})
            threads.append(
                _in_thread(
                    "alerts",
                    lambda: run_alerts(alert_settings, database_url=url, stop=stop),
                )
            )
            console.print(
                Panel.fit(
                    f"profile  [bold]{done.sync.profile}[/] ({done.sync.sectors_written} sectors "
                    f"written)\ndatabase {redact(url)}\nbroker   {mqtt_url}"
                    + (f" ({broker.kind})" if broker else "")
                    + f"\ningest   1 worker (MQTT {settings.mqtt_protocol})"
                    + f"\nsimulate {sources} sources, {rate:g} msg/s"
                    + "\nalerts   rules from the profile; sweeper; notifier on MQTT"
                    + f"\nAPI      http://{host}:{port}  (docs: /docs, health: /readyz)"
                    + f"\nkey      {demo_key}  (admin; a new one each start)"
                    f"\ndata     {settings.data_dir}\n[dim]Ctrl-C stops everything.[/]",
                    title="ioc demo",
                )
            )
            uvicorn.run(
                "api.app:create_app",
                factory=True,
                host=host,
                port=port,
                log_level=settings.log_level.lower(),
            )
        finally:
            stop.set()
            for thread in threads:  # the simulator first, then ingest commits what it holds
                thread.join(timeout=60)
            if broker is not None:
                broker.stop()


def _check_port_free(host: str, port: int) -> None:
    """Refuse at once when the API's address is taken (another `ioc demo`, say)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}): is another ioc demo or "
                "ioc serve running? Stop it, or pass --port"
            ) from None


def main() -> None:
    """Entry point: run the CLI; an ioc error ends it with one line and exit code 1."""
    try:
        app()  # standalone: typer reports usage errors itself and exits with code 2
    except IocError as exc:
        reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        err_console.print(f"[red]error:[/] {reason}", highlight=False, soft_wrap=True)
        sys.exit(1)
