"""The ``scorelab`` command line (click). Every command is wrapped by ``one_line_errors``: a ValueError,
TypeError or FileNotFoundError prints as one line ``error: <what is wrong and the fix>`` and exits with code 2,
without a traceback (click's own usage errors exit 2 as well).

    scorelab train CONFIG.yaml [--set key=value ...] --out RUN_DIR [--resume]
    scorelab demo [--quick] [--out DIR]
    scorelab sample RUN_DIR --method NAME --nfe N -n COUNT --out FILE(.npy|.png)
    scorelab likelihood RUN_DIR --data FILE.npy [--bits-per-dim]
    scorelab denoise RUN_DIR --data noisy.npy --sigma S --out clean.npy
    scorelab figures [--out DIR] [--quick]

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
    """Run the embedded default demo: train on a 2-D mixture, sample, measure against the truth, report."""
    from .demo import run_demo

    run_demo(out, quick=quick, echo=click.echo)


def _load_run(run_dir):
    from .run import load

    return load(run_dir)


def _load_data(path):
    from .data import load_array

    return load_array(path)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--method", default="dpm_solver", show_default=True, help="A name from scorelab.samplers().")
@click.option("--nfe", default=20, show_default=True, type=int, help="Budget of score evaluations.")
@click.option("-n", "count", default=1000, show_default=True, type=int, help="Number of samples.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npy (or .png for images).")
@one_line_errors
def sample(run_dir, method, nfe, count, seed, out):
    """Sample a trained run; writes the samples in data units (the run's scaling undone)."""
    import numpy as np
    import torch

    from .samplers import sample as draw

    if not out.endswith((".npy", ".png")):
        raise ValueError(f"--out must end in .npy or .png, got {out!r}.")
    if count < 1:
        raise ValueError(f"-n must be a positive number of samples, got {count}.")
    run = _load_run(run_dir)
    res = draw(run.score, run.sde, (count, *run.data_shape), method=method, nfe=nfe,
               generator=torch.Generator().manual_seed(seed))
    x = run.scaler.inverse(res.x) if run.scaler is not None else res.x
    if out.endswith(".png"):
        from . import plots

        if x.ndim == 4:
            plots.save_image_grid(x, out, nrow=max(1, int(count**0.5)))
        elif x.ndim == 2 and x.shape[1] == 2:
            plots.samples_scatter({method: x}, path=out)
        else:
            raise ValueError("--out .png needs images [n, C, H, W] or 2-D points; use .npy for other data.")
    else:
        np.save(out, x.numpy())
    click.echo(f"wrote {count} samples ({res.nfe} score evaluations) to {out}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False), help=".npy/.csv in data units.")
@click.option("--bits-per-dim", is_flag=True, help="Integer image data: report bits/dim with dequantisation.")
@click.option("--bits", default=8, show_default=True, type=int, help="Bit depth of the data for --bits-per-dim.")
@click.option("--divergence", default="exact", type=click.Choice(["exact", "hutchinson"]), show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@one_line_errors
def likelihood(run_dir, data_path, bits_per_dim, bits, divergence, seed):
    """Negative log-likelihood (nats, or bits/dim) of data under a trained run, by the probability-flow ODE."""
    import torch

    from .likelihood import bits_per_dim as bpd_fn
    from .likelihood import log_likelihood

    run = _load_run(run_dir)
    x = _load_data(data_path)
    if tuple(x.shape[1:]) != run.data_shape:
        raise ValueError(f"--data has examples of shape {tuple(x.shape[1:])}, the run was trained on {run.data_shape}.")
    g = torch.Generator().manual_seed(seed)
    if bits_per_dim:
        a, b = (1.0, 0.0) if run.scaler is None else _affine(run.scaler, x)
        res = bpd_fn(run.score, run.sde, x, bits=bits, scaler=(a * 2**bits, b), generator=g, divergence=divergence)
        click.echo(f"bits/dim: {float(res.bpd.mean()):.4f} over {len(x)} examples ({res.nfe} score evaluations)")
    else:
        y = run.scaler.forward(x) if run.scaler is not None else x
        res = log_likelihood(run.score, run.sde, y, generator=g, divergence=divergence)
        D = x[0].numel()
        click.echo(f"nll: {float(res.nll.mean()):.4f} nats ({float(res.nll.mean()) / D:.4f} nats/dim, model units) "
                   f"over {len(x)} examples ({res.nfe} score evaluations)")


def _affine(scaler, x):
    """(a, b) of the run's affine data scaler y = a x + b, read off at 0 and 1."""
    import torch

    zero = torch.zeros_like(x[:1])
    b = scaler.forward(zero)
    return scaler.forward(zero + 1) - b, b


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False), help="Noisy .npy/.csv.")
@click.option("--sigma", required=True, type=float, help="Noise level of the data in model units.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npy.")
@one_line_errors
def denoise(run_dir, data_path, sigma, out):
    """Tweedie denoising E[x_0 | y] of noisy data at a known noise level."""
    import numpy as np

    from .tweedie import denoise as tweedie_denoise

    run = _load_run(run_dir)
    y = _load_data(data_path)
    y = run.scaler.forward(y) if run.scaler is not None else y
    x = tweedie_denoise(run.score, run.sde, y, sigma)
    x = run.scaler.inverse(x) if run.scaler is not None else x
    np.save(out, x.detach().numpy())
    click.echo(f"wrote {len(x)} denoised examples to {out}")


@main.command()
@click.option("--out", default="figures_out", type=click.Path(file_okay=False), help="Output directory.")
@click.option("--quick", is_flag=True, help="Smaller experiments (seconds instead of about half a minute).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random draw.")
@one_line_errors
def figures(out, quick, seed):
    """The lecture notes' experiments as figures and a report (report.md, report.html)."""
    from .figures import run_all

    res = run_all(out, quick=quick, seed=seed)
    for name, fig in res["figures"].items():
        click.echo(f"{name}: {fig.path}")
    click.echo(f"report: {res['report'][1]}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_path", default=None, type=click.Path(dir_okay=False),
              help="Held-out .npy/.csv [N, d] (default: fresh draws of the run's built-in synthetic data set).")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the results as JSON here.")
@click.option("-n", "count", default=4000, show_default=True, type=int, help="Held-out points used.")
@click.option("--nll-n", default=500, show_default=True, type=int, help="Points whose NLL is computed (0: skip).")
@click.option("--method", default=None, help="Sampler (default: scorelab's default sampling).")
@click.option("--nfe", default=None, type=int, help="Budget of score evaluations of --method.")
@click.option("--seed", default=0, show_default=True, type=int)
@one_line_errors
def evaluate(run_dir, data_path, out, count, nll_n, method, nfe, seed):
    """NLL, sliced Wasserstein and MMD (with floors) of a vector-data run on held-out data; moment KL / mode TV
    against the exact mixture for the built-in mixture toys."""
    from .evaluate import evaluate as run_evaluate
    from .evaluate import write_json
    from .report import format_table

    res = run_evaluate(_load_run(run_dir), data_path, n=count, nll_n=nll_n, method=method, nfe=nfe, seed=seed)
    click.echo(f"{res['run']}: {res['n_samples']} samples ({res['sampler']}, nfe {res['nfe']}) vs {res['data']}")
    click.echo(format_table(res["rows"]))
    if out:
        click.echo(f"wrote {write_json(res, out)}")


if __name__ == "__main__":  # torchrun -m scorelab.cli train ...
    main()
