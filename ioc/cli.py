"""The `ioc` command line."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from ioc import migrate
from ioc.catalogue import Profile, bundled_profile_names, load_profile
from ioc.db import redact
from ioc.errors import IocError
from ioc.logs import configure_logging
from ioc.runtime import database, prepare
from ioc.settings import Settings, get_settings

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


# --- db ------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Migrate the database up (default: to head), then sync the profile into it."""
    settings = _settings()
    with database(settings) as url:
        if revision == "head":
            done = prepare(url, settings)
            console.print(
                f"database {redact(url)} at revision [bold]{done.revision}[/]; profile "
                f"[bold]{done.sync.profile}[/]: {done.sync.sectors_written} sector(s) written, "
                f"{done.sync.sectors_deactivated} deactivated"
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
) -> None:
    """Serve the HTTP API (uvicorn)."""
    import uvicorn

    settings = _settings()
    with database(settings) as url:
        prepare(url, settings)
        _hand_over(url)
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=host or settings.http_host,
            port=port or settings.http_port,
            log_level=settings.log_level.lower(),
        )


@app.command("demo")
def demo(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Run everything on this machine: embedded database and broker, profile, API."""
    import uvicorn

    from ioc.embedded_broker import EmbeddedBroker

    settings = _settings()
    port = port or settings.http_port
    with database(settings) as url:
        done = prepare(url, settings)
        broker = None
        mqtt_url = settings.mqtt_url.get_secret_value() if settings.mqtt_url else None
        if mqtt_url is None:
            broker = EmbeddedBroker(settings.data_dir)
            mqtt_url = broker.start()
        try:
            _hand_over(url, mqtt_url)
            console.print(
                Panel.fit(
                    f"profile  [bold]{done.sync.profile}[/] ({done.sync.sectors_written} sectors "
                    f"written)\ndatabase {redact(url)}\nbroker   {mqtt_url}"
                    + (f" ({broker.kind})" if broker else "")
                    + f"\nAPI      http://{host}:{port}  (docs: /docs, health: /readyz)"
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
            if broker is not None:
                broker.stop()


def main() -> None:
    """Entry point: run the CLI; an ioc error ends it with one line and exit code 1."""
    try:
        app()  # standalone: typer reports usage errors itself and exits with code 2
    except IocError as exc:
        reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        err_console.print(f"[red]error:[/] {reason}", highlight=False, soft_wrap=True)
        sys.exit(1)
