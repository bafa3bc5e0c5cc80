"""The ``scorelab`` command line (click). Every command is wrapped by ``one_line_errors``: a ValueError,
TypeError or FileNotFoundError prints as one line ``error: <what is wrong and the fix>`` and exits with code 2,
without a traceback (click's own usage errors exit 2 as well).

    scorelab train CONFIG.yaml [--set key=value ...] --out RUN_DIR [--resume]
    scorelab demo [--quick] [--out DIR]
    scorelab sample RUN_DIR --method NAME --nfe N -n COUNT --out FILE(.npy|.png) [--opt key=value ...]
                    [--batch-size B] [--device auto|cpu|cuda] [--individual DIR] [--quiet]
    scorelab samplers                    # every method with its options and defaults
    scorelab likelihood RUN_DIR --data FILE.npy [--bits-per-dim] [--batch-size B] [--device D]
    scorelab denoise RUN_DIR --data noisy.npy --sigma S --out clean.npy [--device D]
    scorelab evaluate RUN_DIR [--data FILE] [--out FILE.json] [--method NAME --nfe N --opt key=value ...] [--exact]
                      [--device D]
    scorelab figures [--out DIR] [--quick] [--only NAME ...]
    scorelab inpaint RUN_DIR --input FILE(.npy|.png) --mask FILE(.npy|.png) --out FILE(.npy|.png) [--method smc]
    scorelab sample RUN_DIR --class K|all [--guidance W] [--classifier DIR] ...   # guided / class-conditional
    scorelab classifier RUN_DIR|CONFIG --out DIR [--steps N]     # a noise-conditional classifier for guidance
    scorelab colorize RUN_DIR --input GRAY(.npy|.png) --out FILE(.npy|.png)       # runs on RGB images
    scorelab --version | -h

Nothing heavy is imported at start-up (torch, matplotlib load inside the commands), so ``--help`` is instant.
Long steps show a tqdm progress bar on a terminal (none when the output is not a terminal, or with --quiet).

Multi-process data parallel: ``torchrun --nproc_per_node 2 -m scorelab.cli train CONFIG --out RUN_DIR``.
"""

from __future__ import annotations

import functools
import math
import os
import sys

import click

from ._extras import MissingExtraError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, MissingExtraError)  # the last: "pip install 'scorelab[..]'"
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


def _version() -> str:
    from ._version import __version__

    return __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(_version(), "--version", "-V", prog_name="scorelab")
def main():
    """scorelab: score-based generative modelling."""


def _progress_disabled(quiet: bool):
    """tqdm's ``disable``: True with --quiet, None (= off when stderr is not a terminal) otherwise."""
    return True if quiet else None


def _device(name: str):
    """--device auto|cpu|cuda[:k] -> torch.device (auto: CUDA when present)."""
    from .config import resolve_device

    try:
        return resolve_device(name)
    except ValueError:
        raise ValueError(f"--device {name!r} is not usable here; use auto, cpu or cuda (when CUDA is available)."
                         ) from None


def _batches(n: int, batch_size: int | None):
    """[(start, stop)] chunks of ``batch_size`` (all at once when None)."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size}.")
    size = n if batch_size is None else batch_size
    return [(i, min(n, i + size)) for i in range(0, n, size)]


@main.command(short_help="Train a score model from a config (bundled name or .yaml).")
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


@main.command(short_help="The embedded demo: train, sample, measure against the truth, report.")
@click.option("--quick", is_flag=True, help="Under a minute.")
@click.option("--out", default="demo_out", type=click.Path(file_okay=False), help="Output directory.")
@one_line_errors
def demo(quick, out):
    """Run the embedded default demo: train on a 2-D mixture, sample, measure against the truth, report."""
    from .demo import run_demo

    _check_out_dir(out)
    run_demo(out, quick=quick, echo=click.echo)


def _load_run(run_dir, device="cpu"):
    from .run import load

    return load(run_dir, device=device)


def _load_data(path):
    from .data import load_array

    return load_array(path)


class _MethodChoice(click.Choice):
    """click.Choice over scorelab.samplers.METHODS, read only when a command needs it (keeps start-up light)."""

    def __init__(self):
        super().__init__((), case_sensitive=True)

    @property
    def choices(self):
        from .samplers import METHODS

        return tuple(METHODS)

    @choices.setter
    def choices(self, value):  # click's __init__ assigns; the table is the truth
        pass

    def convert(self, value, param, ctx):
        # the choices show in --help and shell completion; a wrong name is refused by the command itself as one
        # line ``error: unknown sampling method ...; choose one of [...]`` (exit 2), like every user error
        return value


# Options of ``sample()`` itself that every method takes (the time grid by name), besides the method's own.
_SAMPLE_OPTIONS = {"grid": None}


def method_options(method: str) -> dict:
    """{option: default} of a sampling method: its own (``scorelab.samplers.options_of``) and ``sample()``'s grid."""
    from .samplers import options_of

    return {**options_of(method), **_SAMPLE_OPTIONS}


def parse_method_options(method: str, pairs) -> dict:
    """``--opt key=value`` pairs (values parsed as YAML) checked against the method's signature."""
    import yaml

    from .samplers import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; choose one of {list(METHODS)}.")
    known = method_options(method)
    out = {}
    for text in pairs:
        key, sep, raw = str(text).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--opt {text!r} is not of the form key=value, e.g. --opt order=3.")
        if key not in known:
            valid = ", ".join(known) or "none"
            raise ValueError(f"--opt {key}: method {method!r} has no option {key!r}; its options: {valid} "
                             "(see `scorelab samplers`).")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ValueError(f"--opt {text!r}: the value is not valid YAML.") from None
    return out


class _EvalProgress:
    """A score function that advances a tqdm bar by one per evaluation (the sampler's unit of work)."""

    def __init__(self, fn, bar):
        self.fn, self.bar = fn, bar

    def __call__(self, x, t):
        self.bar.update(1)
        return self.fn(x, t)


@main.command(short_help="Sample a trained run with any method (--opt for its options).")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--method", default=None, type=_MethodChoice(),
              help="Sampling method (`scorelab samplers` lists each with its options); default: the library's "
                   "default at the budget (scorelab.samplers.default_sampler).")
@click.option("--nfe", default=None, type=int,
              help="Budget of score evaluations per batch (default: scorelab.samplers.DEFAULT_NFE).")
@click.option("-n", "count", default=1000, show_default=True, type=int, help="Number of samples.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="A method option, e.g. --opt order=3 --opt grid=karras (checked against the method); "
                   "--opt grid=optimized searches a grid for this run once (kept in RUN_DIR/grids).")
@click.option("--batch-size", type=int, default=None, help="Samples per batch (default: all in one batch).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda[:k].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output .npy, or .png for images: a grid, each image upscaled to >= 56 px, in the data's range.")
@click.option("--individual", "individual", default=None, type=click.Path(file_okay=False),
              help="Images only: also write each sample as its own PNG into this folder (never overwrites).")
@click.option("--class", "klass", default=None, metavar="K|all",
              help="Sample class K (a class-conditional run, or any run with --classifier); 'all': -n per class, "
                   "in class order (a .png then has one row per class).")
@click.option("--guidance", default=None, type=float,
              help="Guidance scale w >= 0 (default 1: the conditional itself). Class-conditional runs: "
                   "classifier-free, s(x) + w (s(x|y) - s(x)); with --classifier: s(x) + w grad log p_t(y|x).")
@click.option("--classifier", "classifier_dir", default=None, type=click.Path(),
              help="A noise-conditional classifier for this run's process (`scorelab classifier RUN --out DIR`): "
                   "classifier guidance.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@one_line_errors
def sample(run_dir, method, nfe, count, opts, batch_size, device, seed, out, individual, klass, guidance,
           classifier_dir, quiet):
    """Sample a trained run; writes the samples in data units (the run's scaling undone).

    Batches draw from one generator in turn, so the same --seed and --batch-size give the same samples."""

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from .samplers import sample as draw

    _check_out_file(out, (".npy", ".png"))
    if individual is not None:
        _check_individual_dir(individual)
    if nfe is None:
        from .samplers import DEFAULT_NFE as nfe
    defaults = {}
    as_default = method is None and not opts  # sample() then chooses method and options itself (sample(nfe=N))
    if method is None:
        from .samplers import default_sampler

        method, defaults = default_sampler(nfe)
    if count < 1:
        raise ValueError(f"-n must be a positive number of samples, got {count}.")
    if nfe > MAX_NFE:  # the step grids are allocated up front: a typo like 10^12 must not exhaust memory
        raise ValueError(f"--nfe {nfe} is beyond any useful budget (at most {MAX_NFE}; samplers converge within a "
                         "few thousand evaluations).")
    _check_seed(seed)
    if guidance is not None and not (guidance >= 0 and math.isfinite(guidance)):
        raise ValueError(f"--guidance must be a finite scale >= 0 (0: unconditional, 1: the conditional, > 1: "
                         f"sharper), got {guidance}.")
    if klass is None and (guidance is not None or classifier_dir is not None):
        raise ValueError("--guidance and --classifier need --class K (the class to guide towards).")
    options = {**defaults, **parse_method_options(method, opts)}
    chunks = _batches(count, batch_size)
    dev = _device(device)
    run = _load_run(run_dir, dev)
    scores = {None: run.score} if klass is None else _guided_scores(run, klass, guidance, classifier_dir)
    _check_memory(4.0 * (chunks[0][1] - chunks[0][0]) * math.prod(run.data_shape) * 4, f"-n {count}")
    shape = (count, *run.data_shape)
    if out.lower().endswith(".png") and not (len(shape) == 4 or (len(shape) == 2 and shape[1] == 2)):
        raise ValueError("--out .png needs images [n, C, H, W] or 2-D points; use .npy for other data.")
    if individual is not None and len(shape) != 4:
        raise ValueError("--individual writes images [n, C, H, W]; this run's samples are not images.")
    if method == "mala":  # MALA's accept/reject needs the energy, which only an energy model has
        if run.config["model"]["parameterization"] != "energy":
            raise ValueError("--method mala needs a run trained with model.type=energy (it uses the energy in its "
                             "accept/reject step); use --method langevin for this run.")
        options["energy_fn"] = run.model.energy
    if isinstance(options.get("grid"), str) and options["grid"] == "optimized":  # searched once, kept in RUN/grids
        from pathlib import Path

        from .samplers import optimized_grid

        rest = {k: v for k, v in options.items() if k != "grid"}
        options["grid"] = optimized_grid(run.score, run.sde, nfe, method, dims=run.data_shape, device=dev,
                                         cache_dir=Path(run_dir) / "grids", **rest)
    g = torch.Generator(device=dev).manual_seed(seed)
    parts, used, ran = [], 0, {}  # ran: what each batch ran (sample()'s choice without --method), in order
    with tqdm(total=nfe * len(chunks) * len(scores), desc=f"sample {method}", unit="eval",
              disable=_progress_disabled(quiet), leave=False) as bar:
        for score in scores.values():
            for lo, hi in chunks:
                res = draw(_EvalProgress(score, bar), run.sde, (hi - lo, *run.data_shape), nfe=nfe, generator=g,
                           **({} if as_default else {"method": method, **options}))
                parts.append(run.to_data(res.x).cpu())
                used += res.nfe
                ran[res.describe(run.sde)] = None
    x = torch.cat(parts)
    if x.ndim == 4 and (individual is not None or out.lower().endswith(".png")):
        from . import plots

        view = {"value_range": run.data_range(), "levels": run.data_levels(), "min_size": GRID_MIN_PIXELS}
        shown = x
        if run.dequantized and view["value_range"] and view["levels"]:  # samples are v = k + U: show floor(v)
            lo, hi = view["value_range"]
            shown = x - (hi - lo) / (view["levels"] - 1) / 2
        if individual is not None:
            plots.save_images(shown, individual, **view)
    if out.lower().endswith(".png"):
        from . import plots

        if x.ndim == 4:
            plots.save_image_grid(shown, out, nrow=count if len(scores) > 1 else max(1, math.ceil(count**0.5)), **view)
        elif x.ndim == 2 and x.shape[1] == 2:
            plots.samples_scatter({method: x}, path=out)
        else:
            raise ValueError("--out .png needs images [n, C, H, W] or 2-D points; use .npy for other data.")
    else:
        with open(out, "wb") as f:  # exactly the named file (np.save on a name would append .npy)
            np.save(f, x.numpy())
    what = "" if klass is None else f" of class {klass}" + (f", guidance {guidance:g}" if guidance is not None else "")
    click.echo(f"wrote {len(x)} samples{what} ({used} score evaluations; {'; '.join(ran)}) to {out}"
               + (f" and one PNG each to {individual}" if individual is not None else ""))


def _guided_scores(run, klass: str, guidance, classifier_dir) -> dict:
    """{class: score function} for --class K|all: classifier-free guidance for a class-conditional run, classifier
    guidance with --classifier; every bad combination is one ValueError line."""
    from .guidance import classifier_free, classifier_guided

    w = 1.0 if guidance is None else float(guidance)
    clf = None
    if classifier_dir is not None:
        from .classifier import load_for_run

        clf = load_for_run(classifier_dir, run)
        n_classes, where = clf.num_classes, f"the classifier {classifier_dir}"
    elif not run.num_classes:
        raise ValueError(f"{run.run_dir} has no labels (trained without model.num_classes), so --class needs "
                         "--classifier DIR (`scorelab classifier RUN --out DIR`), or train with model.num_classes=K.")
    else:
        n_classes, where = run.num_classes, "this run"
    if klass == "all":
        classes = list(range(n_classes))
    else:
        try:
            classes = [int(klass)]
        except ValueError:
            raise ValueError(f"--class must be a class index or 'all', got {klass!r}.") from None
        if not 0 <= classes[0] < n_classes:
            raise ValueError(f"--class {klass} is out of range: {where} has {n_classes} classes, 0..{n_classes - 1}.")
    if clf is not None:
        return {k: classifier_guided(run.score, clf, k, w) for k in classes}
    # classifier-free with gamma = w: uncond + w (cond - uncond) = classifier_free(cond, uncond, w - 1)
    return {k: classifier_free(functools.partial(run.score, y=k), run.score, w - 1) for k in classes}

GRID_MIN_PIXELS = 56  # short side of one image in a written grid (8x8 digits are drawn 7x larger)


def _check_individual_dir(folder: str) -> None:
    """Before any work: --individual names a folder that can be created and holds no sample-*.png yet."""
    from pathlib import Path

    _check_out_dir(folder)
    p = Path(folder)
    if p.is_dir() and any(p.glob("sample-*.png")):
        raise ValueError(f"--individual {folder!r} already holds sample-*.png files; choose an empty or new folder "
                         "(nothing is overwritten).")


@main.command("samplers", short_help="List the sampling methods with their options and defaults.")
def list_samplers():
    """Every sampling method with its options (name=default), read from the method functions."""
    from .samplers import METHODS

    for name in METHODS:
        opts = method_options(name)
        text = "  ".join(f"{k}={v!r}" if not isinstance(v, str) else f"{k}={v}" for k, v in opts.items())
        click.echo(f"{name:<18} {text or '(no options)'}")


@main.command(short_help="Negative log-likelihood (or bits/dim) of data under a run.")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False), help=".npy/.csv in data units.")
@click.option("--bits-per-dim", is_flag=True, help="Integer image data: report bits/dim with dequantisation.")
@click.option("--bits", default=None, type=int,
              help="Bit depth of the data for --bits-per-dim (default: the run's levels, e.g. 17 for digits, else 8).")
@click.option("--divergence", default="exact", type=click.Choice(["exact", "hutchinson"]), show_default=True)
@click.option("--batch-size", default=256, show_default=True, type=int, help="Examples per ODE solve.")
@click.option("--tol", default=1e-5, show_default=True, type=float, help="rtol = atol of the adaptive ODE solver.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda[:k].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@one_line_errors
def likelihood(run_dir, data_path, bits_per_dim, bits, divergence, batch_size, tol, device, seed, quiet):
    """Negative log-likelihood (nats, or bits/dim) of data under a trained run, by the probability-flow ODE."""
    import torch
    from tqdm.auto import tqdm

    from .likelihood import bits_per_dim as bpd_fn
    from .likelihood import log_likelihood

    if bits_per_dim and bits is not None and not 1 <= bits <= 32:
        raise ValueError(f"--bits must be a bit depth in [1, 32], got {bits}.")
    _check_seed(seed)
    dev = _device(device)
    run = _load_run(run_dir, dev)
    x = run.check_data(_load_data(data_path), "--data").to(dev)
    levels = (run.data_levels() or 256) if bits is None else 2**bits
    g = torch.Generator(device=dev).manual_seed(seed)
    values, nfe = [], 0
    T, eps = float(run.sde.T), 1e-5  # the solve runs from eps (log_likelihood's default) to T
    with tqdm(total=len(x), desc="likelihood", unit="ex", disable=_progress_disabled(quiet), leave=False) as bar:
        for lo, hi in _batches(len(x), batch_size):
            xb = x[lo:hi]

            def advance(t, lo=lo, size=hi - lo):  # the bar moves with the solver's time inside a batch
                target = lo + size * min(max((t - eps) / (T - eps), 0.0), 1.0)
                if target > bar.n:
                    bar.update(target - bar.n)

            opts = {"divergence": divergence, "rtol": tol, "atol": tol, "callback": None if quiet else advance}
            if bits_per_dim:
                a, b = (1.0, 0.0) if run.scaler is None else _affine(run.scaler, xb)
                res = bpd_fn(run.score, run.sde, xb, levels=levels, scaler=(a * levels, b), generator=g, **opts)
                values.append(res.bpd.detach().cpu())
            else:
                res = log_likelihood(run.score, run.sde, run.to_model(xb), generator=g, **opts)
                values.append(res.nll.detach().cpu())
            nfe += res.nfe
            bar.update(hi - bar.n)
    v = torch.cat(values)
    if bits_per_dim:
        click.echo(f"bits/dim: {float(v.mean()):.4f} over {len(x)} examples ({nfe} score evaluations)")
    else:
        D = x[0].numel()
        click.echo(f"nll: {float(v.mean()):.4f} nats ({float(v.mean()) / D:.4f} nats/dim, model units) "
                   f"over {len(x)} examples ({nfe} score evaluations)")


def _affine(scaler, x):
    """(a, b) of the run's affine data scaler y = a x + b, read off at 0 and 1."""
    import torch

    zero = torch.zeros_like(x[:1])
    b = scaler.forward(zero)
    return scaler.forward(zero + 1) - b, b


@main.command(short_help="Tweedie denoising E[x_0 | y] of noisy data at a known noise level.")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False), help="Noisy .npy/.csv.")
@click.option("--sigma", required=True, type=float, help="Noise level of the data in model units.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npy.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda[:k].")
@one_line_errors
def denoise(run_dir, data_path, sigma, out, device):
    """Tweedie denoising E[x_0 | y] of noisy data at a known noise level."""
    import numpy as np

    from .tweedie import denoise as tweedie_denoise

    _check_out_file(out, (".npy",))
    dev = _device(device)
    run = _load_run(run_dir, dev)
    y = run.to_model(run.check_data(_load_data(data_path), "--data", noise=abs(sigma)).to(dev))
    x = run.to_data(tweedie_denoise(run.score, run.sde, y, sigma))
    with open(out, "wb") as f:  # exactly the named file
        np.save(f, x.detach().cpu().numpy())
    click.echo(f"wrote {len(x)} denoised examples to {out}")


@main.command(short_help="The lecture notes' experiments as figures and a report.")
@click.option("--out", default="figures_out", type=click.Path(file_okay=False), help="Output directory.")
@click.option("--quick", is_flag=True, help="Smaller experiments (seconds instead of about half a minute).")
@click.option("--only", "only", multiple=True, metavar="NAME",
              help="Run only this figure (repeatable), e.g. --only tweedie; an unknown name lists the valid ones.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random draw.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@one_line_errors
def figures(out, quick, only, seed, quiet):
    """The lecture notes' experiments as figures and a report (report.md, report.html)."""
    from .figures import run_all

    _check_out_dir(out)
    _check_seed(seed)
    res = run_all(out, quick=quick, seed=seed, names=list(only) or None, progress=not quiet)
    for name, fig in res["figures"].items():
        click.echo(f"{name}: {fig.path}")
    click.echo(f"report: {res['report'][1]}")


@main.command(short_help="Held-out NLL / bits/dim and sample-vs-data distances (with floors) of a run.")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_path", default=None, type=click.Path(dir_okay=False),
              help="Held-out .npy/.csv in data units (default: the test split of a built-in image set, or fresh "
                   "draws of the run's built-in synthetic data set).")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the results as JSON here.")
@click.option("-n", "count", default=4000, show_default=True, type=int,
              help="Held-out points used (images: samples drawn, at most the test set's size).")
@click.option("--nll-n", default=500, show_default=True, type=int,
              help="Points whose NLL (images: bits/dim) is computed (0: skip).")
@click.option("--method", default=None, type=_MethodChoice(), help="Sampler (default: scorelab's default sampling).")
@click.option("--nfe", default=None, type=int, help="Budget of score evaluations of --method.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="An option of --method (without --method: of the default at --nfe), e.g. --method unipc --opt "
                   "grid=uniform; checked against the method, as `scorelab sample` does.")
@click.option("--exact", is_flag=True,
              help="Images: the exact divergence for bits/dim (D backward passes per step) instead of Hutchinson.")
@click.option("--tol", default=1e-4, show_default=True, type=float,
              help="Images: rtol = atol of the likelihood ODE (1e-5: Song et al. 2021's, twice the time).")
@click.option("--batch-size", default=100, show_default=True, type=int, help="Images per likelihood solve.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="Folder of the reference classifier (default: $SCORELAB_CACHE or ~/.cache/scorelab).")
@click.option("--classifier-steps", default=None, type=int,
              help="Training steps of the reference classifier (default: per data set; part of its cache key).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda[:k].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@one_line_errors
def evaluate(run_dir, data_path, out, count, nll_n, method, nfe, opts, exact, tol, batch_size, cache_dir,
             classifier_steps, device, seed, quiet):
    """Vector runs: NLL, sliced Wasserstein and MMD (with floors) on held-out data; moment KL / mode TV against
    the exact mixture for the built-in mixture toys. Image runs: bits/dim of the test split (Hutchinson, or
    --exact) with its standard error and the per-pixel histogram baseline; the Frechet distance in the features
    of a reference classifier trained on the same data set (cached), with its floor (train vs test) and a
    Gaussian baseline; the classifier's confidence and entropy on samples vs test images."""
    from .evaluate import evaluate as run_evaluate
    from .evaluate import write_json
    from .report import format_table

    if out:
        _check_out_file(out, (".json",))
    _check_seed(seed)
    if count < 1 or nll_n < 0:
        raise ValueError(f"-n must be >= 1 and --nll-n >= 0, got {count} and {nll_n}.")
    if not tol > 0:
        raise ValueError(f"--tol must be > 0, got {tol}.")
    options = {}
    if opts:  # checked before the run loads: a typo costs nothing
        from .samplers import DEFAULT_NFE, default_method

        options = parse_method_options(method or default_method(DEFAULT_NFE if nfe is None else nfe), opts)
    run = _load_run(run_dir, _device(device))
    extra = {}
    if len(run.data_shape) == 3:
        extra = {"divergence": "exact" if exact else "hutchinson", "tol": tol, "batch_size": batch_size,
                 "cache": cache_dir, "progress": not quiet, "classifier_steps": classifier_steps}
    elif exact:
        raise ValueError("--exact applies to image runs (vector runs always use the exact divergence).")
    res = run_evaluate(run, data_path, n=count, nll_n=nll_n, method=method, nfe=nfe, seed=seed, **extra, **options)
    click.echo(f"{res['run']}: {res['n_samples']} samples ({res['sampler']}, nfe {res['nfe']}) vs {res['data']}")
    click.echo(format_table(res["rows"]))
    if "bits_per_dim" in res:
        b = res["bits_per_dim"]
        click.echo(f"bits/dim {b['bpd']:.4f} +- {b['se']:.4f} ({b['divergence']}, {b['n']} images, "
                   f"{b['seconds']:.0f} s, {b['nfe']} score evaluations); baselines: per-pixel histogram "
                   + (f"{b['histogram']:.4f}" if b["histogram"] is not None else "n/a")
                   + f", uniform {b['uniform']:.4f}")
    if res.get("classifier"):
        c = res["classifier"]
        click.echo(f"reference classifier: {c['data']} {c['split']} split, {c['steps']} steps, test accuracy "
                   f"{c['test_accuracy']:.4f}")
    if res.get("frechet_floor_draws"):
        f = res["frechet_floor_draws"]
        click.echo(f"Frechet floor: mean of {f['n_draws']} train subsets, std {f['std']:.3g} "
                   f"(range {f['min']:.3g} to {f['max']:.3g})")
    for key in ("note", "warning"):
        if res.get(key):
            click.echo(f"{key}: {res[key]}")
    if out:
        click.echo(f"wrote {write_json(res, out)}")


def _conditional_options(out, seed, nfe, method, particles) -> dict:
    """The checks shared by inpaint and colorize (output file, seed, budget, --particles only with smc) and the
    method options they give."""
    _check_out_file(out, (".npy", ".png"))
    _check_seed(seed)
    if nfe < 1 or nfe > MAX_NFE:
        raise ValueError(f"--nfe must be in [1, {MAX_NFE}], got {nfe}.")
    if particles is None:
        return {}
    if method != "smc":
        raise ValueError(f"--particles belongs to --method smc, not {method!r}; drop it or use --method smc.")
    return {"particles": particles}


def _read_inpaint_file(path: str, what: str):
    """--input / --mask: a .npy array [N, *dims] or [*dims], or a .png image (pixels / 255, [1, C, H, W])."""
    from pathlib import Path

    import numpy as np
    import torch

    p = Path(path)
    if p.suffix.lower() not in (".npy", ".png"):
        raise ValueError(f"{what} {path!r} must be a .npy array or a .png image.")
    if not p.is_file():
        raise ValueError(f"{what} file not found: {path}; check the path.")
    if p.suffix.lower() == ".png":
        from ._extras import require

        Image = require("PIL.Image", "plots", "reading .png files")
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("L") if im.mode in ("1", "L", "LA", "P", "I", "I;16")
                                 else im.convert("RGB"))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # corrupt or truncated
            raise ValueError(f"{what} {path!r} is not a readable PNG image ({' '.join(str(err).split())[:120]}); "
                             "check the file or export it again.") from None
        arr = arr.astype(np.float32) / 255.0
        arr = arr[None, None] if arr.ndim == 2 else arr.transpose(2, 0, 1)[None]
        return torch.from_numpy(np.ascontiguousarray(arr))
    from .data import read_npy  # header, complex and dtype checks; unlike load_array, NaN (unknown) is allowed

    try:
        arr = read_npy(p)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


@main.command(short_help="Fill in the masked entries of data with a run (consistent SMC by default).")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="Data with missing entries: .npy [N, *dims] or [*dims] in data units, or a .png (pixels / 255).")
@click.option("--mask", "mask_path", required=True, type=click.Path(dir_okay=False),
              help="1 = known, 0 = to fill: .npy or .png (white = known), shaped like the input or broadcastable to it "
                   "(one example; one channel for all).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npy (or .png for images).")
@click.option("--method", default="smc", show_default=True,
              help="smc (consistent), replacement, or any replacement sampler (pc, ode, ...).")
@click.option("--nfe", default=400, show_default=True, type=int, help="Score evaluations (per particle for smc).")
@click.option("--particles", default=None, type=int, help="Particles per example (smc only; default 32).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda[:k].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quiet", is_flag=True, help="No progress line.")
@one_line_errors
def inpaint(run_dir, input_path, mask_path, out, method, nfe, particles, device, seed, quiet):
    """Sample the entries of --input where --mask is 0 given those where it is 1, with the run's score;
    writes the completed data in data units (known entries unchanged)."""
    import numpy as np
    import torch

    from .conditional import inpaint as fill

    options = _conditional_options(out, seed, nfe, method, particles)
    x = _read_inpaint_file(input_path, "--input")
    mask = _read_inpaint_file(mask_path, "--mask")
    dev = _device(device)
    run = _load_run(run_dir, dev)
    shape = tuple(run.data_shape)
    if tuple(x.shape) == shape:
        x = x[None]
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"--input has examples of shape {tuple(x.shape[1:])}, the run was trained on {shape}.")
    try:
        fits = torch.broadcast_shapes(mask.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"--mask has shape {tuple(mask.shape)}, which matches neither --input {tuple(x.shape)} nor "
                         f"one example {shape}; give a mask shaped like the input (1 = known, 0 = to fill).")
    run.check_data(torch.where(mask > 0.5, x, torch.full((), float("nan"))), "--input", noise=None)
    mask = (mask > 0.5).to(dev).expand(x.shape)
    data = torch.where(mask, x.to(dev), torch.zeros((), device=dev))  # unknown entries may be NaN in the file
    z = run.to_model(data)
    g = torch.Generator(device=dev).manual_seed(seed)
    res = fill(run.score, run.sde, z, mask, method=method, nfe=nfe, generator=g, **options)
    y = torch.where(mask, data, run.to_data(res.x)).detach().cpu()  # known entries bit for bit in data units
    if out.lower().endswith(".png"):
        if y.ndim != 4:
            raise ValueError("--out .png needs images [N, C, H, W]; use .npy for other data.")
        from . import plots

        plots.save_image_grid(y, out, nrow=max(1, int(len(y) ** 0.5)))
    else:
        with open(out, "wb") as f:  # exactly the named file
            np.save(f, y.numpy())
    if not quiet:
        click.echo(f"wrote {len(y)} completed examples ({res.nfe} score evaluations, method {method}) to {out}")


@main.command("classifier", short_help="Train a noise-conditional classifier p_t(y | x_t) for guidance.")
@click.argument("source")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write the classifier to.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config overrides (SOURCE a config).")
@click.option("--steps", default=2000, show_default=True, type=int, help="Training steps (Adam, cosine lr).")
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--width", default=32, show_default=True, type=int, help="Network width.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda[:k].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@one_line_errors
def classifier(source, out, overrides, steps, batch_size, width, device, seed, quiet):
    """Train a noise-conditional classifier on the labelled data and process of SOURCE (a run directory or a
    config), saved with the process it was trained for; guide a run of that process with
    `scorelab sample RUN --class K --classifier DIR`."""
    from pathlib import Path

    from .classifier import CLASSIFIER_FILE, save_classifier, train_for_run

    _check_out_dir(out)
    _check_seed(seed)
    for name, v in (("--steps", steps), ("--batch-size", batch_size), ("--width", width)):
        if v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v}.")
    if (Path(out) / CLASSIFIER_FILE).exists():
        raise ValueError(f"{out} already holds a classifier; choose a new --out directory.")
    clf, info = train_for_run(source, steps=steps, seed=seed, width=width, batch_size=batch_size,
                              overrides=overrides, device=_device(device), progress=not quiet)
    path = save_classifier(clf, Path(out) / CLASSIFIER_FILE, info)
    click.echo(f"trained a {clf.num_classes}-class noise-conditional classifier ({steps} steps, process "
               f"{info['sde']['type']}); wrote {path}")


@main.command(short_help="Colour grey images with a run trained on RGB images (consistent SMC by default).")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="Grey images in data units: .npy [N, 1, H, W], [N, H, W] or [H, W], or a .png (pixels / 255).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npy (or .png).")
@click.option("--method", default="smc", show_default=True, help="smc (consistent), replacement, or a sampler.")
@click.option("--nfe", default=400, show_default=True, type=int, help="Score evaluations (per particle for smc).")
@click.option("--particles", default=None, type=int, help="Particles per image (smc only; default 32).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda[:k].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quiet", is_flag=True, help="No summary line.")
@one_line_errors
def colorize(run_dir, input_path, out, method, nfe, particles, device, seed, quiet):
    """Sample RGB images whose channel mean is the grey --input, with a run trained on RGB images; writes them in
    data units."""
    import numpy as np
    import torch

    from .conditional import colorize as colour

    options = _conditional_options(out, seed, nfe, method, particles)
    dev = _device(device)
    run = _load_run(run_dir, dev)
    shape = tuple(run.data_shape)
    if len(shape) != 3 or shape[0] != 3:
        kind = "grey images" if len(shape) == 3 and shape[0] == 1 else "data"
        raise ValueError(f"colorize needs a run trained on RGB images [3, H, W]; {run_dir} was trained on {kind} of "
                         f"shape {list(shape)}, which have no colour to sample.")
    gray = _read_inpaint_file(input_path, "--input")
    if gray.ndim == 4 and gray.shape[1] == 3 and input_path.lower().endswith(".png"):
        gray = gray.mean(1, keepdim=True)  # a colour .png: its grey (channel-mean) image
    if tuple(gray.shape[-2:]) != shape[1:] or gray.ndim not in (2, 3, 4) or (gray.ndim == 4 and gray.shape[1] != 1):
        raise ValueError(f"--input has shape {tuple(gray.shape)}; give grey images [N, 1, {shape[1]}, {shape[2]}], "
                         f"[N, {shape[1]}, {shape[2]}] or one [{shape[1]}, {shape[2]}] (the run's image size).")
    gray = gray.reshape(-1, 1, *shape[1:]).to(dev)
    if not bool(torch.isfinite(gray).all()):
        raise ValueError("--input holds NaN/inf; every grey pixel must be known.")
    z = run.to_model(gray.expand(-1, 3, -1, -1)).mean(1, keepdim=True)  # the run's scaling, applied per channel
    g = torch.Generator(device=dev).manual_seed(seed)
    res = colour(run.score, run.sde, z, generator=g, method=method, nfe=nfe, **options)
    y = run.to_data(res.x).detach().cpu()
    if out.lower().endswith(".png"):
        from . import plots

        plots.save_image_grid(y, out, nrow=max(1, int(len(y) ** 0.5)))
    else:
        with open(out, "wb") as f:  # exactly the named file
            np.save(f, y.numpy())
    if not quiet:
        click.echo(f"wrote {len(y)} colourised images ({res.nfe} score evaluations, method {method}) to {out}")


if __name__ == "__main__":  # torchrun -m scorelab.cli train ...
    main()
