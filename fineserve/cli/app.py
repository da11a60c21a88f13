"""Wiring only: one module per command group."""

from __future__ import annotations

import typer

from fineserve.cli import (
    deploy_cmd,
    models_cmd,
    plan_cmd,
    profile_cmd,
    profiles_cmd,
    replay_cmd,
    simulate_cmd,
    workload_cmd,
)

app = typer.Typer(
    name="fineserve",
    help="Serve many mixed-precision LLMs on shared GPUs: profile, plan, deploy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("plan")(plan_cmd.plan)
app.command("profile")(profile_cmd.profile)
app.command("models")(models_cmd.models)
app.command("workload")(workload_cmd.workload)
app.command("replay")(replay_cmd.replay)
app.command("simulate")(simulate_cmd.simulate)
app.command("compare")(simulate_cmd.compare)
app.command("deploy")(deploy_cmd.deploy)
app.command("status")(deploy_cmd.status)
app.command("stop")(deploy_cmd.stop)
app.add_typer(profiles_cmd.app, name="profiles")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
