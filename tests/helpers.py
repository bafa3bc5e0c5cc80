"""Small builders shared by several test files (imported as ``from helpers import ...``)."""


def tiny_config(data_path, **train_kw):
    """A training config small enough to run a few steps in well under a second: VP, a 16-wide MLP, sde_dsm."""
    return {
        "data": {"path": str(data_path)},
        "sde": {"type": "vp"},
        "model": {"type": "mlp", "hidden": 16, "depth": 2, "embed_dim": 8},
        "objective": {"name": "sde_dsm"},
        "train": {"steps": 6, "batch_size": 8, "lr": 1e-3, "warmup": 2, "ema_decay": 0.5, "log_every": 3,
                  "ckpt_every": 3, "device": "cpu", "tensorboard": False, "threads": 1, **train_kw},
    }


def three_component_mixture(d=3, seed=0, jitter=0.1):
    """A random 3-component mixture in d dimensions, weights 0.2/0.3/0.5, covariances 0.5 A A^T + jitter I."""
    import math

    import torch

    from scorelab.oracle import GaussianMixture

    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(3, d, generator=g, dtype=torch.float64)
    A = torch.randn(3, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    covs = 0.5 * A @ A.transpose(1, 2) + jitter * torch.eye(d, dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5]), means, covs)


def noisy_points(gmm, sde, n, seed=1, t_range=(0.02, 0.82)):
    """n exact samples of p_t at times drawn uniformly in t_range: (x [n, d], t [n])."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lo, hi = t_range
    t = torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo
    return gmm.sample(n, t, sde, generator=g), t


# Options that make `scorelab train` tiny (a 16-wide MLP, batch 8, CPU, checkpoints every 2 steps, no bar).
TINY = ["--set", "model.hidden=16", "--set", "model.depth=2", "--set", "model.embed_dim=8",
        "--set", "train.batch_size=8", "--set", "train.device=cpu", "--set", "train.tensorboard=false",
        "--set", "train.ckpt_every=2", "--quiet"]


def invoke(*args):
    """Run the `scorelab` command line in-process with the arguments as strings; returns click's Result."""
    from click.testing import CliRunner

    from scorelab.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(res, *words, code=2):
    """The command failed with exit ``code`` and printed exactly one line `error: ...` holding every word."""
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    for w in words:
        assert w in lines[0], (w, lines[0])
