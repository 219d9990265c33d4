"""The `inferag` command: `inferag serve` runs the stack, `inferag weights ...` prepares weights offline."""

from __future__ import annotations

import typer

from services.generation.weights.cli import app as weights_app

app = typer.Typer(name="inferag", no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(weights_app, name="weights")


@app.command()
def serve() -> None:
    """Start the one-process stack (generation + embeddings) with the settings from the environment."""
    from services.gateway.app import main

    main()


if __name__ == "__main__":
    app()
