"""`nasbench cluster up|down|status`: a local Ray head on 127.0.0.1 with token auth."""

from __future__ import annotations

import typer

app = typer.Typer(help="Start, stop and inspect a local Ray cluster (loopback only, token auth).")

ADDRESS_OPTION = typer.Option(
    None, "--address", help="Dashboard URL of another cluster (default: the local one).",
    show_default=False,
)


@app.command()
def up(
    port: int = typer.Option(6379, "--port", min=1, max=65535, help="GCS port of the head."),
    dashboard_port: int = typer.Option(8265, "--dashboard-port", min=1, max=65535,
                                      help="Dashboard/Jobs API port."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", min=1, max=4096,
                                         help="CPUs Ray may use (default: all)."),
    object_store_mb: int | None = typer.Option(
        None, "--object-store-mb", min=64, max=2**24,
        help="Object store size in MiB (default: Ray's choice)."
    ),
    resource: list[str] = typer.Option(
        [], "--resource", help="A device label this node offers, NAME=AMOUNT (repeatable): "
        "search objectives such as latency_ms@node:NAME are measured where it is.",
    ),
) -> None:
    """Start a Ray head on 127.0.0.1; jobs submitted to it find this project's venv."""
    from nasbench.distributed.cluster import nasbench_home, parse_resources, start_head

    state = start_head(
        nasbench_home(), port=port, dashboard_port=dashboard_port, num_cpus=num_cpus,
        object_store_mb=object_store_mb, resources=parse_resources(resource),
    )
    typer.echo(f"Ray head up: address {state.address}, dashboard {state.dashboard_url}")
    typer.echo(f"auth token: {state.token_path} (clients: RAY_AUTH_TOKEN_PATH={state.token_path})")


@app.command()
def down() -> None:
    """Stop the local Ray head started by `nasbench cluster up`."""
    from nasbench.distributed.cluster import nasbench_home, stop_head

    state = stop_head(nasbench_home())
    typer.echo(f"Ray head at {state.address} stopped")


@app.command()
def status(address: str | None = ADDRESS_OPTION) -> None:
    """Show the cluster's address, dashboard URL and resources (used / total)."""
    from nasbench.distributed.cluster import nasbench_home, read_state
    from nasbench.distributed.dashboard import check_ray, cluster_resources
    from nasbench.distributed.jobs import resolve_target

    home = nasbench_home()
    target = resolve_target(address, home)
    version = check_ray(target.address, target.headers)
    state = read_state(home) if target.is_local else None
    if state is not None:
        typer.echo(f"{'address:':<19} {state.address}")
        typer.echo(f"{'pid:':<19} {state.pid}")
        typer.echo(f"{'log:':<19} {state.log_path}")
    typer.echo(f"{'dashboard:':<19} {target.address}")
    typer.echo(f"{'ray:':<19} {version}")
    for name, (used, total) in sorted(cluster_resources(target.address, target.headers).items()):
        if name.startswith("node:"):
            continue
        label = f"{name}:".ljust(19)
        if name in {"memory", "objectStoreMemory", "object_store_memory"}:
            typer.echo(f"{label} {used / 2**30:.2f} / {total / 2**30:.2f} GiB")
        else:
            typer.echo(f"{label} {used:g} / {total:g}")
