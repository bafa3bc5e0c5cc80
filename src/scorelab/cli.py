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
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
USER_ERRORS = (ValueError, TypeError, FileNotFoundError)
MAX_MESSAGE = 600  # characters of an error line
MAX_NFE = 10**6


def _out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", ())
    if oom and isinstance(e, oom):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("alloc" in text or "out of memory" in text)


def one_line_errors(fn):
    """Wrap a command so a user error becomes ``error: ...`` on stderr (one line) and exit code 2.

    Besides ValueError/TypeError/FileNotFoundError: an OSError on a path (unwritable or not-a-directory
    --out, ...), an allocation failure (a batch, network or -n too large for memory) and a structure nested too
    deeply are one line with exit 2; Ctrl-C is one line with exit 130, and a training run stopped by
    SIGINT/SIGTERM says where its checkpoint is (exit 128 + the signal).
    """

    def fail(msg: str, code: int = EXIT_USER_ERROR):
        msg = " ".join(msg.split())
        if len(msg) > MAX_MESSAGE:
            msg = msg[:MAX_MESSAGE] + " ..."
        click.echo(f"error: {msg}", err=True)
        sys.exit(code)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            msg = " ".join(str(e).split()) or type(e).__name__
            if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in msg:
                msg = f"{msg}: {e.filename}"
            fail(msg)
        except KeyboardInterrupt:
            fail("interrupted (Ctrl-C); a training run keeps its last checkpoint, continue it with --resume.",
                 EXIT_INTERRUPTED)
        except RecursionError:
            fail("an input is nested too deeply to be read (a damaged or hostile file?); check the files given.")
        except OSError as e:
            if e.filename is None:
                raise
            what = e.strerror or type(e).__name__
            fail(f"cannot use {str(e.filename)!r}: {what}; choose a path you can write to (for --out, a new file "
                 "or directory in an existing, writable folder).")
        except Exception as e:
            from .train import TrainingInterrupted

            if isinstance(e, TrainingInterrupted):
                fail(str(e), 128 + int(e.signum))
            if _out_of_memory(e):
                fail(f"out of memory ({' '.join(str(e).split())[:160]}); lower the sizes asked for (-n, "
                     "train.batch_size, the model's width) or the number of examples.")
            raise

    return wrapper


def _check_out_file(out: str, suffixes: tuple[str, ...]) -> None:
    """Before any work: --out ends in one of ``suffixes`` and can be created (its folder exists, is writable)."""
    from pathlib import Path

    if not out.lower().endswith(suffixes):
        raise ValueError(f"--out must end in {' or '.join(suffixes)}, got {out!r}.")
    p = Path(out)
    if p.is_dir():
        raise ValueError(f"--out {out!r} is a directory; give a file name ending in {' or '.join(suffixes)}.")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"--out {out!r}: the folder {str(parent)!r} does not exist (or is not a folder); create it "
                         "first.")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ValueError(f"--out {out!r} cannot be written (permission denied); choose another path.")


def _check_out_dir(out: str) -> None:
    """Before any work: --out is (or can be made) a writable directory."""
    from pathlib import Path

    if not str(out).strip():
        raise ValueError("--out is empty; name an output directory.")
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {out!r} exists and is not a directory; choose a directory.")
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and (not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK)):
        raise ValueError(f"--out {out!r} cannot be created or written ({str(probe)!r} is not a writable folder); "
                         "choose another directory.")


def _check_seed(seed: int) -> int:
    if not 0 <= seed < 2**63:
        raise ValueError(f"--seed must be in [0, 2^63 - 1], got {seed}.")
    return seed


def _check_memory(nbytes: float, what: str) -> None:
    """Refuse, before allocating, an array larger than half the machine's memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if nbytes > total / 2:
        raise ValueError(f"{what} needs about {nbytes / 2**30:.3g} GiB, more than half of this machine's "
                         f"{total / 2**30:.3g} GiB; ask for fewer.")


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

    _check_out_dir(out)
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

    _check_out_dir(out)
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
    import math

    import numpy as np
    import torch

    from .samplers import sample as draw

    _check_out_file(out, (".npy", ".png"))
    if count < 1:
        raise ValueError(f"-n must be a positive number of samples, got {count}.")
    if nfe > MAX_NFE:  # the step grids are allocated up front: a typo like 10^12 must not exhaust memory
        raise ValueError(f"--nfe {nfe} is beyond any useful budget (at most {MAX_NFE}; samplers converge within a "
                         "few thousand evaluations).")
    _check_seed(seed)
    run = _load_run(run_dir)
    _check_memory(4.0 * count * math.prod(run.data_shape) * 4, f"-n {count}")  # x, score and a few buffers
    shape = (count, *run.data_shape)
    if out.lower().endswith(".png") and not (len(shape) == 4 or (len(shape) == 2 and shape[1] == 2)):
        raise ValueError("--out .png needs images [n, C, H, W] or 2-D points; use .npy for other data.")
    options = {}
    if method == "mala":  # MALA's accept/reject needs the energy, which only an energy model has
        if run.config["model"]["parameterization"] != "energy":
            raise ValueError("--method mala needs a run trained with model.type=energy (it uses the energy in its "
                             "accept/reject step); use --method langevin for this run.")
        options["energy_fn"] = run.model.energy
    res = draw(run.score, run.sde, shape, method=method, nfe=nfe,
               generator=torch.Generator().manual_seed(seed), **options)
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
        with open(out, "wb") as f:  # exactly the named file (np.save on a name would append .npy)
            np.save(f, x.numpy())
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

    if bits_per_dim and not 1 <= bits <= 32:
        raise ValueError(f"--bits must be a bit depth in [1, 32], got {bits}.")
    _check_seed(seed)
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

    _check_out_file(out, (".npy",))
    run = _load_run(run_dir)
    y = _load_data(data_path)
    y = run.scaler.forward(y) if run.scaler is not None else y
    x = tweedie_denoise(run.score, run.sde, y, sigma)
    x = run.scaler.inverse(x) if run.scaler is not None else x
    with open(out, "wb") as f:  # exactly the named file
        np.save(f, x.detach().numpy())
    click.echo(f"wrote {len(x)} denoised examples to {out}")


@main.command()
@click.option("--out", default="figures_out", type=click.Path(file_okay=False), help="Output directory.")
@click.option("--quick", is_flag=True, help="Smaller experiments (seconds instead of about half a minute).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random draw.")
@one_line_errors
def figures(out, quick, seed):
    """The lecture notes' experiments as figures and a report (report.md, report.html)."""
    from .figures import run_all

    _check_out_dir(out)
    _check_seed(seed)
    res = run_all(out, quick=quick, seed=seed)
    for name, fig in res["figures"].items():
        click.echo(f"{name}: {fig.path}")
    click.echo(f"report: {res['report'][1]}")


if __name__ == "__main__":  # torchrun -m scorelab.cli train ...
    main()
