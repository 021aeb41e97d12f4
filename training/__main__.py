"""``python -m training``: the training commands without the rest of the service."""

import typer

from training.cli import register

app = typer.Typer(no_args_is_help=True)


@app.callback()
def main() -> None:
    """Train, evaluate and export fracture models."""


register(app)

if __name__ == "__main__":
    app()
