"""The ``scorelab`` command line (click). Every command is wrapped by ``one_line_errors``: a ValueError,
TypeError or FileNotFoundError prints as one line ``error: <what is wrong and the fix>`` and exits with code 2,
without a traceback (click's own usage errors exit 2 as well).

    scorelab train CONFIG.yaml [--set key=value ...] --out RUN_DIR [--resume]
    scorelab demo [--quick] [--out DIR]

Multi-process data parallel: ``torchrun --nproc_per_node 2 -m scorelab.cli train CONFIG --out RUN_DIR``.
"""

from __future__ import annotations

import functools
import os
import sys

import click

EXIT_USER_ERROR = 2
USER_ERRORS = (ValueError, TypeError, FileNotFoundError)


def one_line_errors(fn):
    """Wrap a command so a user error becomes ``error: ...`` on stderr (one line) and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            msg = " ".join(str(e).split()) or type(e).__name__
            if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in msg:
                msg = f"{msg}: {e.filename}"
            click.echo(f"error: {msg}", err=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


@click.group()
def main():
    """scorelab: score-based generative modelling."""


@main.command()
@click.argument("config")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config entry, e.g. --set train.steps=500 --set data.path=x.npy (YAML values).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@one_line_errors
def train(config, overrides, out, resume, quiet):
    """Train the score model described by CONFIG (a .yaml path or a bundled name such as `toy`)."""
    from .train import train as run_training

    result = run_training(config, out, resume=resume, overrides=overrides, progress=not quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        click.echo(f"trained to step {result.step}; run directory {result.run_dir} (load with scorelab.load)")


@main.command()
@click.option("--quick", is_flag=True, help="Under a minute.")
@click.option("--out", default="demo_out", type=click.Path(file_okay=False), help="Output directory.")
@one_line_errors
def demo(quick, out):
    """Run the embedded default demo (end-to-end toy run on the CPU)."""
    click.echo("scorelab demo: coming soon")


# Further verbs are added here, each decorated with @main.command() and @one_line_errors:
#   sample RUN_DIR --method NAME --nfe N -n COUNT --out FILE(.npy|.png)   (loads with scorelab.run.load)
#   likelihood RUN_DIR --data FILE.npy [--bits-per-dim]
#   figures [--out DIR]


if __name__ == "__main__":  # torchrun -m scorelab.cli train ...
    main()
