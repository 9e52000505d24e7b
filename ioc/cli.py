"""The `ioc` command line."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

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
                ws_per_message_deflate=WS_DEFLATE,
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


WS_DEFLATE: Final = False
"""Websocket compression: off. It halved the messages one API process can send (58 against
29 us of CPU each, bench/ws.py) to save bandwidth on what is mostly a local network."""

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
            + ", logging each alert transition (Ctrl-C stops)"
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
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="Also follow ioc demo's schedule: an anomaly within seconds, then one every "
            "30-60 s, a camera offline, a salinity intrusion where salinity is measured.",
        ),
    ] = False,
) -> None:
    """Publish realistic telemetry for every sector of a profile (IOC_MQTT_URL required)."""
    from ingest.simulator import SimulationConfig, demo_schedule, run_simulation

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
        demo=demo_schedule(
            sweep_interval_s=settings.alerts_sweep_interval_s,
            min_silence_s=settings.alerts_min_silence_s,
        )
        if demo
        else None,
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


DEMO_OPERATOR_KEY_NAME = "ioc demo operator"
# how long the demo's sweeper waits for the simulator's sources to report once after a restart
FIRST_ROUND_WAIT_S = 20.0


@app.command("demo")
def demo(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    sources: Annotated[int, typer.Option(min=1, help="Simulated sources.")] = 40,
    rate: Annotated[float, typer.Option(help="Simulated messages per second.")] = 20.0,
    profile: Annotated[
        str | None,
        typer.Option(
            help="Profile: bac-lieu, binh-phuoc, mekong or a YAML file (default: IOC_PROFILE)."
        ),
    ] = None,
) -> None:
    """Run everything on this machine: database, broker, ingest, alerts, simulator and API."""
    import uvicorn
    from pydantic import SecretStr

    from alerts.service import retire_sources, run_alerts
    from ingest.simulator import (
        SimulationConfig,
        TelemetryPublisher,
        demo_schedule,
        place_simulated_sources,
        simulated_ids,
        source_ids,
    )
    from ingest.worker import run_worker
    from ioc.embedded_broker import EmbeddedBroker

    settings = _settings()
    port = port or settings.http_port
    chosen = load_profile(profile or settings.profile)  # an unknown profile stops here
    settings = settings.model_copy(update={"profile": profile or settings.profile})
    _exit_on_sigterm()
    # before starting anything: a second demo stops here, on the same data or the same port
    with _demo_lock(settings.data_dir):
        _check_port_free(host, port)
        with database(settings) as url:
            done = _prepare(url, settings, chosen)
            schedule = demo_schedule(
                sweep_interval_s=settings.alerts_sweep_interval_s,
                min_silence_s=settings.alerts_min_silence_s,
            )
            sim_config = SimulationConfig(
                profile=chosen,
                sources=sources,
                rate_per_s=rate,
                mqtt_protocol=settings.mqtt_protocol,
                demo=schedule,
            )
            simulated = source_ids(sim_config)
            # simulated sources of an earlier run (another profile, or more of them) would
            # look silent for ever: the demo retires them
            every_profile = [load_profile(n) for n in bundled_profile_names()] + [chosen]
            retired = retire_sources(
                url, simulated_ids(every_profile), keep=simulated, actor=cli_actor()
            )
            admin_key, operator_key = _demo_keys(url, settings)
            with psycopg.connect(libpq_url(url)) as conn:  # districts and positions, for maps
                place_simulated_sources(conn, sim_config, actor=cli_actor())
            broker = None
            mqtt_url = settings.mqtt_url.get_secret_value() if settings.mqtt_url else None
            if mqtt_url is None:
                broker = EmbeddedBroker(settings.data_dir)
                mqtt_url = broker.start()
            if broker is not None and broker.kind == "amqtt":
                settings = settings.model_copy(update={"mqtt_protocol": "3.1.1"})  # no MQTT 5
                sim_config = dataclasses.replace(sim_config, mqtt_protocol="3.1.1")
            stop = threading.Event()
            threads: list[threading.Thread] = []
            try:
                _hand_over(url, mqtt_url)
                os.environ["IOC_MQTT_PROTOCOL"] = settings.mqtt_protocol
                os.environ["IOC_PROFILE"] = settings.profile  # the API's profile
                get_settings.cache_clear()
                started = datetime.now(UTC)
                threads.append(
                    _in_thread(
                        "ingest",
                        lambda: run_worker(
                            settings, database_url=url, mqtt_url=mqtt_url, profile=chosen, stop=stop
                        ),
                    )
                )
                simulator = TelemetryPublisher(mqtt_url, sim_config, stop=stop)
                threads.insert(0, _in_thread("simulator", simulator.run))
                alert_settings = settings.model_copy(update={"mqtt_url": SecretStr(mqtt_url)})
                reporting = [
                    s.source_id
                    for s in simulator.stream.sources
                    if not simulator.stream.model.is_silent(s, int(started.timestamp() * 1000))
                ]

                def alerts() -> None:
                    # after a restart every source looks silent until it reports again
                    _await_first_round(url, reporting, started, stop)
                    run_alerts(alert_settings, database_url=url, stop=stop)

                threads.append(_in_thread("alerts", alerts))
                shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
                base = f"http://{shown}:{port}"
                gap = "-".join(f"{s:g}" for s in schedule.anomaly_gap_s)
                hidden = done.sync.sectors_deactivated
                console.print(
                    Panel.fit(
                        f"profile  [bold]{done.sync.profile}[/] ({done.sync.sectors_written} "
                        "sectors written"
                        + (f", {hidden} of the previous profile hidden)" if hidden else ")")
                        + (
                            f"\nretired  {retired.sources} simulated source(s) of an earlier "
                            f"run, {retired.alerts_resolved} of their alert(s) resolved"
                            if retired.sources
                            else ""
                        )
                        + f"\ndatabase {redact(url)}\nbroker   {mqtt_url}"
                        + (f" ({broker.kind})" if broker else "")
                        + f"\ningest   1 worker (MQTT {settings.mqtt_protocol})"
                        + f"\nsimulate {sources} sources, {rate:g} msg/s: an anomaly within "
                        f"seconds, then one every {gap} s; a camera offline every few minutes"
                        + (", salinity intrusions" if simulator.stream.has_intrusions else "")
                        + "\nalerts   rules from the profile; sweeper; notifier on MQTT; each "
                        "transition logged"
                        + f"\nAPI      {base}  (docs: /docs, health: /readyz)"
                        + f"\ndata     {settings.data_dir}\n[dim]Ctrl-C stops everything.[/]",
                        title="ioc demo",
                    )
                )
                # printed whole, never folded, so they can be copied and clicked
                console.print(
                    f"screen   {base}/#key={operator_key}  (signed in as an operator)",
                    soft_wrap=True,
                    highlight=False,
                )
                console.print(
                    f"key      {admin_key}  (admin, for /docs and curl; a new one each start)",
                    soft_wrap=True,
                    highlight=False,
                )
                uvicorn.run(
                    "api.app:create_app",
                    factory=True,
                    host=host,
                    port=port,
                    log_level=settings.log_level.lower(),
                    ws_per_message_deflate=WS_DEFLATE,
                )
            finally:
                stop.set()
                for thread in threads:  # the simulator first, then ingest commits what it holds
                    thread.join(timeout=60)
                if broker is not None:
                    broker.stop()


def _demo_keys(url: str, settings: Settings) -> tuple[str, str]:
    """New keys for the demo, the previous run's revoked: an admin one for /docs and curl, and
    an operator one the screen signs in with."""
    pepper = settings.api_key_pepper.get_secret_value()
    with psycopg.connect(libpq_url(url)) as conn:
        _, admin = replace_named_key(
            conn, name=DEMO_KEY_NAME, role=Role.ADMIN, pepper=pepper, actor=cli_actor()
        )
        _, operator = replace_named_key(
            conn, name=DEMO_OPERATOR_KEY_NAME, role=Role.OPERATOR, pepper=pepper, actor=cli_actor()
        )
    return admin, operator


@contextmanager
def _demo_lock(data_dir: Path) -> Iterator[None]:
    """Hold `demo.lock` in the data dir for the demo's life; refuse at once when another
    process holds it (the lock goes with the process, even when it is killed)."""
    import fcntl

    path = data_dir / "demo.lock"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot use the data dir {data_dir}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise ConfigError(
                f"another ioc demo{who} is running on the data dir {data_dir}: stop it, or "
                "set IOC_DATA_DIR to another folder"
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot lock {path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _await_first_round(
    url: str, source_ids: list[str], since: datetime, stop: threading.Event
) -> None:
    """Wait (at most FIRST_ROUND_WAIT_S) until every source in `source_ids` that reported
    before `since` has reported again: a sweep before that would call them all silent."""
    deadline = time.monotonic() + FIRST_ROUND_WAIT_S
    try:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            while not stop.is_set() and time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT count(*) FROM source WHERE id = ANY(%s) AND last_reading_at < %s",
                    (source_ids, since),
                ).fetchone()
                if row is None or row[0] == 0:
                    return
                stop.wait(0.25)
    except psycopg.Error as exc:
        logging.getLogger("ioc.demo").warning(
            "could not wait for the sources to report", extra={"error": str(exc).strip()}
        )


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
