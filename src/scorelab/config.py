"""Training configs: YAML in, built objects out. The only place where names become classes.

A config has five sections; every key is checked (unknown keys, wrong types and out-of-range values are a
ValueError that names the key and the valid choices), and missing keys take the published defaults below.

    data:      name (a built-in data set) or path (.npy/.csv/image folder), n, scale, split, layout, dequantize
    sde:       type ve | vp | subvp, plus that process's constructor arguments
    model:     type mlp | unet | energy, parameterization, plus that network's constructor arguments
    objective: name (a key of scorelab.objectives.OBJECTIVES), plus that objective's options
    train:     steps, batch_size, lr, warmup, lr_schedule, grad_clip, ema_decay, ema_power, adam_betas, adam_eps, seed,
               log_every, ckpt_every, device, tensorboard, threads, precision, sample_every, sample_nfe

``load_config(path_or_name, overrides)`` reads a file (or a bundled config by bare name, e.g. ``toy``),
applies ``key.sub=value`` overrides (values parsed as YAML) and returns the complete, validated config as a
plain dict (what a checkpoint stores). ``build_sde``/``build_model``/``build_objective``/``build_data`` turn
its sections into objects; the tables below are the whole vocabulary.
"""

from __future__ import annotations

import copy
import inspect
import math
import reprlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import yaml

from .sde import VESDE, VPSDE, SubVPSDE

# --------------------------------------------------------------------------- explicit tables (name -> class)
SDES = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}
MODEL_TYPES = ("mlp", "unet", "energy")
SECTIONS = ("data", "sde", "model", "objective", "train")

MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; refuse anything absurd before parsing it
MAX_SEED = 2**63 - 1        # torch.Generator.manual_seed takes 64-bit seeds


def _short(value: Any) -> str:
    """repr capped in length, for error messages about values a user typed (or a file produced)."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = 60, 60, 6, 6, 3
    return r.repr(value)


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases (``*name``): a config never needs them, and nested aliases expand
    exponentially (a few hundred bytes can stand for gigabytes, the "billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ValueError(f"YAML alias *{_short(event.anchor)[1:-1]} at line {event.start_mark.line + 1}: aliases "
                             "are not accepted in configs; write the value out in full.")
        return super().compose_node(parent, index)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


class _Field:
    """One config key: accepted Python types, default, and a range check."""

    def __init__(self, types: tuple[type, ...], default: Any, *, min: float | None = None,
                 min_open: bool = False, choices: Iterable | None = None, nullable: bool = False,
                 length: int | None = None):
        self.types, self.default, self.min, self.min_open = types, default, min, min_open
        self.choices = tuple(choices) if choices is not None else None
        self.nullable, self.length = nullable, length

    def check(self, where: str, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise ValueError(f"{where} must not be empty (null); give a {self._describe()}.")
        if list in self.types:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{where} must be a list, got {_short(value)}.")
            if self.length is not None and len(value) != self.length:
                raise ValueError(f"{where} must be a list of {self.length} numbers, got {_short(value)}.")
            return list(value)
        if isinstance(value, bool) and bool not in self.types:
            raise ValueError(f"{where} must be a {self._describe()}, got the boolean {_short(value)}.")
        if float in self.types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, str) and float in self.types and str not in self.types:
            try:  # YAML reads "2e-4" (no dot) as a string; accept it as the number it clearly is
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, self.types):
            raise ValueError(f"{where} must be a {self._describe()}, got {_short(value)} ({type(value).__name__}).")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {_short(value)}.")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{where} must be one of {list(self.choices)}, got {_short(value)}.")
        if self.min is not None and (value < self.min or (self.min_open and value == self.min)):
            bound = f"> {self.min}" if self.min_open else f">= {self.min}"
            raise ValueError(f"{where} must be {bound}, got {_short(value)}.")
        return value

    def _describe(self) -> str:
        return " or ".join({int: "integer", float: "number", str: "string", bool: "boolean",
                            list: "list", dict: "mapping"}[t] for t in self.types)


def _pos_int(default, **kw):
    return _Field((int,), default, min=1, **kw)


def _pos_float(default, **kw):
    return _Field((float,), default, min=0, min_open=True, **kw)


# --------------------------------------------------------------------------- schemas with published defaults
DATA_FIELDS = {
    "name": _Field((str,), None, nullable=True),        # a built-in data set (scorelab.data), e.g. "ring"
    "path": _Field((str,), None, nullable=True),        # or a .npy / .csv file [N, *dims]
    "n": _pos_int(None, nullable=True),                 # examples drawn/kept (None: the data set's default)
    "scale": _Field((list,), None, nullable=True, length=2),  # map data range to [lo, hi], e.g. [-1, 1] (DDPM)
    "seed": _Field((int,), 0),                          # draws of the synthetic data sets
    "split": _Field((str,), None, nullable=True),       # train | test | all: built-in image sets only (None: train)
    "layout": _Field((str,), "auto", choices=("auto", "nchw")),  # auto: refuse channels-last [N, H, W, C] images
    "dequantize": _Field((bool,), False),               # train on x + U[0, 1) per value of quantised data: the
                                                        # continuous density that bits/dim measures (Theis et al. 2016)
    "labels": _Field((str,), None, nullable=True),      # .npy of int class labels [N] for data.path (class-cond.)
}

SDE_FIELDS = {
    # Song et al. 2021 (score_sde): VE sigma in [0.01, 50] for CIFAR-10; for other data sigma_max should be
    # about the largest pairwise distance in the data (Song & Ermon 2020, technique 1).
    "ve": {"sigma_min": _pos_float(0.01), "sigma_max": _pos_float(50.0), "N": _pos_int(1000)},
    # Song et al. 2021: beta in [0.1, 20], the continuum limit of DDPM's linear 1e-4..0.02 (Ho et al. 2020)
    "vp": {"beta_min": _pos_float(0.1), "beta_max": _pos_float(20.0), "N": _pos_int(1000),
           "schedule": _Field((str,), "linear", choices=("linear", "cosine"))},
    "subvp": {"beta_min": _pos_float(0.1), "beta_max": _pos_float(20.0), "N": _pos_int(1000),
              "schedule": _Field((str,), "linear", choices=("linear", "cosine"))},
}

_PARAM = ("score", "eps", "x0", "edm", "energy")
# sigma_data of "edm" (Karras et al. 2022): null = measured from the training data (its RMS) when training starts
# and written into the run's config, so scorelab.load rebuilds the same model
_SIGMA_DATA = _pos_float(None, nullable=True)
_MLP = {  # widths for 2-D toys; Fourier scale 16 as NCSN++ (Song et al. 2021)
    "parameterization": _Field((str,), "score", choices=_PARAM), "sigma_data": _SIGMA_DATA,
    "hidden": _pos_int(128), "depth": _pos_int(3), "embed_dim": _pos_int(32),
    "fourier_scale": _pos_float(16.0),
    # class-conditional: K classes + a null class, trained with label dropout (Ho & Salimans 2021); null = none
    "num_classes": _Field((int,), None, nullable=True, min=2),
}
MODEL_FIELDS = {
    "mlp": _MLP,
    "energy": {**{k: v for k, v in _MLP.items() if k != "num_classes"},
               "parameterization": _Field((str,), "energy", choices=("energy",))},
    "unet": {  # a trimmed DDPM/NCSN++ U-Net (Ho et al. 2020; Song et al. 2021)
        "parameterization": _Field((str,), "score", choices=_PARAM[:4]), "sigma_data": _SIGMA_DATA,
        "base_channels": _pos_int(32), "channel_mults": _Field((list,), [1, 2]),
        "num_res_blocks": _pos_int(1), "attn_at_lowest": _Field((bool,), True), "embed_dim": _pos_int(128),
        "num_classes": _Field((int,), None, nullable=True, min=2),
    },
}

PRECISIONS = ("auto", "fp32", "bf16")

TRAIN_FIELDS = {
    "steps": _pos_int(2000),
    "batch_size": _pos_int(128),                       # Song et al. 2021 use 128 for CIFAR-10
    "lr": _pos_float(2e-4),                            # Adam, 2e-4 (Ho et al. 2020; Song et al. 2021)
    "warmup": _Field((int,), 5000, min=0),             # linear warm-up steps, 5000 (Song et al. 2021); toys: ~100
    "grad_clip": _Field((float,), 1.0, min=0),         # gradient-norm clip 1.0 (Song et al. 2021); 0 = off
    "ema_decay": _Field((float,), 0.9999, min=0),      # 0.9999 (Ho et al. 2020; Song et al. 2021); toys: 0.999
    "ema_power": _Field((float,), None, min=0, nullable=True),  # power-function EMA gamma (Karras et al. 2024);
                                                       # null = constant ema_decay; 6.94 <-> sigma_rel 0.10
    "lr_schedule": _Field((str,), "constant", choices=("constant", "cosine", "inv_sqrt")),  # after warm-up
    "adam_betas": _Field((list,), [0.9, 0.999], length=2),  # torch/Adam defaults, as score_sde
    "adam_eps": _pos_float(1e-8),
    "seed": _Field((int,), 0, min=0),
    "log_every": _pos_int(100),
    "ckpt_every": _pos_int(1000),
    "device": _Field((str,), "auto"),                  # auto: CUDA when available, else CPU
    "tensorboard": _Field((bool,), False),             # event files too (pip install 'scorelab[tensorboard]')
    "threads": _pos_int(None, nullable=True),          # CPU threads; None: 1 on the CPU (see cpu_threads), torch's
                                                       # default on CUDA
    "precision": _Field((str,), "auto", choices=PRECISIONS),  # auto: bf16 autocast on CUDA, fp32 on the CPU
    "sample_every": _Field((int,), 0, min=0),          # image data: a grid samples/step_N.png every N steps; 0: off
    "sample_nfe": _pos_int(20),                        # its budget (the default at 20: sde_dpm_solver)
}


# --------------------------------------------------------------------------- reading and overriding
def config_dirs() -> list[Path]:
    """Where bare config names are looked up, in order: the bundled configs (the installed package's, the
    repository's configs/), then ./configs for names the bundle lacks; a ./configs/toy.yaml never shadows the
    bundled ``toy`` (give its path to use it)."""
    here = Path(__file__).resolve().parent
    dirs = [here / "configs", here.parents[1] / "configs", Path.cwd() / "configs"]
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def available_configs() -> list[str]:
    """Bare names of the bundled configs (``toy``, ``digits``, ...)."""
    return sorted({p.stem for d in config_dirs() for p in d.glob("*.yaml")})


def find_config(path_or_name: str | Path) -> Path:
    """A config file from a path, or from a bare name such as ``toy`` (looked up in ``config_dirs()``)."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    if p.suffix in ("", ".yaml") and p.parent == Path("."):
        for d in config_dirs():
            cand = d / f"{p.stem}.yaml"
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"config {str(path_or_name)!r} not found; give a path to a .yaml file or one of the "
                            f"bundled names {available_configs()}.")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=1e-3' -> (['train', 'lr'], 0.001); the value is parsed as YAML."""
    key, sep, raw = str(text).partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ValueError(f"override {text!r} is not of the form section.key=value, e.g. train.steps=100.")
    try:
        if len(raw) > MAX_CONFIG_BYTES:
            raise ValueError(f"override {_short(text)}: the value is {len(raw)} characters long; a config value is "
                             "short.")
        value = _yaml_load(raw) if raw.strip() else None
    except RecursionError:
        raise ValueError(f"override {_short(text)}: the value is nested too deeply.") from None
    except yaml.YAMLError as e:
        raise ValueError(f"override {_short(text)}: the value is not valid YAML ({e.__class__.__name__}).") from None
    return parts, value


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    """A copy of the raw config with each ``key.sub=value`` set, in order. Setting data.path clears data.name
    (and the other way round), so every config honours ``--set data.path=FILE.npy``; setting sde.type or
    model.type drops the keys the new type does not accept."""
    cfg = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] not in SECTIONS:
            raise ValueError(f"override {text!r}: unknown section {parts[0]!r}; valid sections: {list(SECTIONS)}.")
        node = cfg
        for p in parts[:-1]:
            if node.get(p) is None:  # absent, or an empty section in the YAML
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ValueError(f"override {text!r}: {p!r} is not a section.")
            node = node[p]
        node[parts[-1]] = value
        if parts[0] == "data" and len(parts) == 2 and parts[1] in ("name", "path") and value is not None:
            node["path" if parts[1] == "name" else "name"] = None
            if parts[1] == "path":  # a file or folder has no splits: drop the built-in set's
                node["split"] = None
        table = {"sde": SDE_FIELDS, "model": MODEL_FIELDS}.get(parts[0])
        if table is not None and parts[1:] == ["type"] and value in table:
            # another process/network: drop the settings the new type does not take (set them after the type)
            fields = table[value]
            cfg[parts[0]] = {k: v for k, v in node.items() if k == "type" or (
                k in fields and (fields[k].choices is None or v in fields[k].choices))}
    return cfg


def load_config(path_or_name: str | Path | dict, overrides: Iterable[str] = ()) -> dict:
    """Read (or take) a config, apply overrides, validate, fill defaults; returns a plain nested dict."""
    if isinstance(path_or_name, dict):
        raw = path_or_name
    else:
        path = find_config(path_or_name)
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"config {str(path)!r} is {path.stat().st_size} bytes; a config is a short YAML file "
                             f"(at most {MAX_CONFIG_BYTES} bytes).")
        try:
            raw = _yaml_load(path.read_text(encoding="utf-8-sig"))
        except yaml.YAMLError as e:
            raise ValueError(f"config {str(path)!r} is not valid YAML: {' '.join(str(e).split())[:300]}") from None
        except UnicodeDecodeError:
            raise ValueError(f"config {str(path)!r} is not UTF-8 text; save it as UTF-8 YAML.") from None
        except RecursionError:
            raise ValueError(f"config {str(path)!r} is nested too deeply to be a config.") from None
        if raw is None:
            raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"a config must be a mapping of sections {list(SECTIONS)}, got {type(raw).__name__}.")
    return validate(apply_overrides(raw, overrides))


def _check_section(name: str, given: Any, fields: dict[str, _Field], skip: tuple[str, ...] = ()) -> dict:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ValueError(f"config section {name!r} must be a mapping, got {given!r}.")
    unknown = sorted(set(given) - set(fields) - set(skip))
    if unknown:
        raise ValueError(f"unknown key {name}.{unknown[0]}; valid keys in {name!r}: {sorted([*skip, *fields])}.")
    return {k: f.check(f"{name}.{k}", given.get(k, f.default)) for k, f in fields.items()}


def _typed(section: str, given: dict, table: dict, key: str, default: str) -> tuple[str, dict]:
    kind = given.get(key, default) if isinstance(given, dict) else default
    if kind not in table:
        raise ValueError(f"{section}.{key} must be one of {sorted(table)}, got {kind!r}.")
    return kind, _check_section(section, given, table[kind], skip=(key,))


def validate(raw: dict) -> dict:
    """The complete config (defaults filled) or a ValueError naming the offending key and the valid ones."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section {unknown[0]!r}; valid sections: {list(SECTIONS)}.")
    cfg: dict[str, Any] = {}

    data = _check_section("data", raw.get("data"), DATA_FIELDS)
    if (data["name"] is None) == (data["path"] is None):
        raise ValueError("data needs exactly one of data.name (a built-in data set) or data.path (.npy/.csv file); "
                         f"got name={data['name']!r}, path={data['path']!r}.")
    if data["scale"] is not None:
        lo, hi = (_Field((float,), 0).check("data.scale[]", v) for v in data["scale"])
        if not lo < hi:
            raise ValueError(f"data.scale must be [lo, hi] with lo < hi, e.g. [-1, 1]; got {data['scale']!r}.")
        data["scale"] = [lo, hi]
    _check_split(data)
    cfg["data"] = data

    kind, sde = _typed("sde", raw.get("sde") or {}, SDE_FIELDS, "type", "ve")
    cfg["sde"] = {"type": kind, **sde}
    build_sde(cfg["sde"])  # the process checks its own ranges (sigma_min < sigma_max, ...)

    kind, model = _typed("model", raw.get("model") or {}, MODEL_FIELDS, "type", "mlp")
    if kind == "unet" and any(not isinstance(m, int) or isinstance(m, bool) or m < 1
                              for m in model["channel_mults"]):
        raise ValueError(f"model.channel_mults must be a list of positive integers, got {model['channel_mults']!r}.")
    cfg["model"] = {"type": kind, **model}

    objective = raw.get("objective") or {}
    if not isinstance(objective, dict):
        raise ValueError(f"config section 'objective' must be a mapping, got {objective!r}.")
    cfg["objective"] = {"name": objective.get("name", "sde_dsm"), **{k: v for k, v in objective.items() if k != "name"}}
    build_objective(cfg["objective"], cfg["data"])  # unknown objective names / options are refused here

    train = _check_section("train", raw.get("train"), TRAIN_FIELDS)
    for where, seed in (("train.seed", train["seed"]), ("data.seed", data["seed"])):
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"{where} must be in [0, 2^63 - 1] (a 64-bit seed), got {_short(seed)}.")
    if not 0 <= train["ema_decay"] < 1:
        raise ValueError(f"train.ema_decay must be in [0, 1), e.g. 0.999; got {train['ema_decay']!r}.")
    if not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in train["adam_betas"]):
        raise ValueError("train.adam_betas must be two numbers in [0, 1), e.g. [0.9, 0.999]; "
                         f"got {train['adam_betas']}.")
    train["adam_betas"] = [float(b) for b in train["adam_betas"]]
    resolve_device(train["device"])
    cfg["train"] = train
    return cfg


def _check_split(data: dict) -> None:
    from .data import IMAGE_SPLITS

    split, name = data["split"], data["name"]
    if split is None:
        return
    if name not in IMAGE_SPLITS:
        source = f"data.path {data['path']!r}" if data["path"] is not None else f"data.name {name!r}"
        raise ValueError(f"data.split={split!r}, but {source} has no splits (only {sorted(IMAGE_SPLITS)} do); "
                         "remove data.split (--set data.split=null) and hold out your own test file.")
    if split not in IMAGE_SPLITS[name]:
        raise ValueError(f"data.split must be one of {list(IMAGE_SPLITS[name])} for {name}, got {_short(split)}.")


# --------------------------------------------------------------------------- builders
def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise a torch device string ('cpu', 'cuda', 'cuda:1')."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"train.device {name!r} is not a device; use auto, cpu or cuda.") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"train.device {name!r} cannot train a model (it is a {dev.type!r} device); use auto, cpu "
                         "or cuda.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but CUDA is not available here; use train.device=auto or cpu.")
    return dev


def build_sde(section: dict):
    """sde section -> a VESDE / VPSDE / SubVPSDE."""
    args = {k: v for k, v in section.items() if k != "type"}
    return SDES[section["type"]](**args)


def sde_section(sde) -> dict:
    """The inverse of ``build_sde``: a VESDE / VPSDE / SubVPSDE -> its sde section."""
    kind = next((k for k, cls in SDES.items() if type(sde) is cls), None)
    if kind is None:
        raise TypeError(f"expected a VESDE, VPSDE or SubVPSDE, got {type(sde).__name__}.")
    return {"type": kind, **{k: getattr(sde, k) for k in SDE_FIELDS[kind]}}


def build_model(section: dict, sde, data_shape: tuple[int, ...]):
    """model section + the per-example data shape [*dims] -> a ScoreModel (network built from torch's global RNG,
    so seed it first)."""
    from .models import EnergyNet, MLPScoreNet, ScoreModel, UNet

    args = {k: v for k, v in section.items() if k not in ("type", "parameterization", "sigma_data")}
    if "num_classes" in args:
        args["num_classes"] = args["num_classes"] or 0
    kind = section["type"]
    if kind == "unet":
        if len(data_shape) != 3:
            raise ValueError(f"model.type=unet needs images [N, C, H, W], but the data has examples of shape "
                             f"{list(data_shape)}; use model.type=mlp for vectors.")
        net = UNet(in_channels=data_shape[0], **{**args, "channel_mults": tuple(args["channel_mults"])})
    else:
        dim = math.prod(data_shape)
        net = (MLPScoreNet if kind == "mlp" else EnergyNet)(dim, **args)
    return ScoreModel(net, sde, parameterization=section["parameterization"], sigma_data=section.get("sigma_data"))


def measure_sigma_data(x: torch.Tensor) -> float:
    """The data's RMS sqrt(mean x^2) over every entry: EDM's sigma_data (Karras et al. 2022), which makes the
    preconditioned network's input c_in x unit-variance at every noise level."""
    return float(x.double().pow(2).mean().sqrt())


def build_objective(section: dict, data_section: dict | None = None, sde=None) -> Callable[..., torch.Tensor]:
    """objective section -> fn(model, x, generator=None) -> [B] losses, with the options bound. ESM's oracle
    target needs the data section (``target: data``) and the model's process ``sde``, to which it is bound here;
    without ``sde`` (config validation) the objective is built but its target refuses to be called."""
    from .objectives import OBJECTIVES, make_objective

    name = section.get("name")
    if name not in OBJECTIVES:
        raise ValueError(f"objective.name must be one of {sorted(OBJECTIVES)}, got {name!r}.")
    options = {k: v for k, v in section.items() if k not in ("name", "label_dropout")}
    label_dropout(section)
    options = _check_option_types(name, OBJECTIVES[name], options)
    if name == "esm":
        options = _esm_target(options, data_section)
        if sde is not None:
            options["target_score"].bind(sde)
    return make_objective(name, **options)


LABEL_DROPOUT = 0.1  # p_uncond of classifier-free guidance training (Ho & Salimans 2021 found 0.1-0.2 best)


def label_dropout(section: dict) -> float:
    """objective.label_dropout: the probability that a class-conditional model sees the null class instead of
    the label (default 0.1, Ho & Salimans 2021); it trains the unconditional score in the same network."""
    p = section.get("label_dropout", LABEL_DROPOUT)
    if isinstance(p, str):
        try:
            p = float(p)
        except ValueError:
            pass
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"objective.label_dropout must be a probability in [0, 1), e.g. 0.1 (Ho & Salimans 2021); "
                         f"got {_short(p)}.")
    return float(p)


def build_labels(section: dict, n: int) -> torch.Tensor | None:
    """The int64 class labels [n] of the data section's examples, in the order ``build_data`` gives them, or None
    when the data set has none: digits / fashion_mnist labels, mixture components of the mixture toys, or the
    ``data.labels`` .npy file beside a ``data.path`` array."""
    from .data import data_labels

    g = torch.Generator().manual_seed(section["seed"])
    source = section["path"] if section["path"] is not None else section["name"]
    y = data_labels(source, section.get("labels"), n=section["n"], generator=g,
                    **({"split": section["split"]} if section.get("split") is not None else {}))
    if y is not None and y.shape[0] != n:
        raise ValueError(f"data {source!r}: {y.shape[0]} labels for {n} examples; give one label per example.")
    return y


def _check_option_types(name: str, fn, options: dict) -> dict:
    """An option whose default is a number must be a finite number (YAML reads "1e-5" as a string: accepted)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return options
    out = dict(options)
    for key, value in options.items():
        default = params[key].default if key in params else None
        if isinstance(default, bool) or not isinstance(default, (int, float)) or value is None:
            continue
        if isinstance(value, str):
            try:
                value = float(value) if isinstance(default, float) else int(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"objective.{key} must be a finite number (objective {name!r}, default {default!r}), "
                             f"got {_short(value)}.")
        out[key] = value
    return out


def _esm_target(options: dict, data_section: dict | None) -> dict:
    """ESM needs the true score. ``target: data`` takes the exact mixture of a toy data set (ring, grid,
    two_modes); ``target: {weights, means, covs}`` names a Gaussian mixture. Its score under the model's process
    (bound by ``bind_objective``) is the regression target at every (x_t, t)."""
    from .oracle import GaussianMixture

    options = dict(options)
    target = options.pop("target", None)
    if target == "data":
        from .data import toy_mixture

        name = (data_section or {}).get("name")
        try:
            gmm = toy_mixture(name)
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"objective.target=data needs a mixture toy as data.name (ring, grid, two_modes), got "
                             f"{name!r}; or give target: {{weights, means, covs}}.") from None
    elif isinstance(target, dict) and set(target) == {"weights", "means", "covs"}:
        gmm = GaussianMixture(*(torch.tensor(target[k], dtype=torch.float64) for k in ("weights", "means", "covs")))
    else:
        raise ValueError("objective esm needs target: data (the exact mixture of a toy data set) or target: "
                         "{weights: [K], means: [K, d], covs: [K, d, d]}, the mixture whose score is the target.")
    options["target_score"] = _GMMScore(gmm)
    return options


class _GMMScore:
    """target_score(x, t) of a mixture, under the process of the model it is paired with at call time."""

    def __init__(self, gmm):
        self.gmm, self.sde, self._fn = gmm, None, None

    def bind(self, sde) -> _GMMScore:
        self.sde, self._fn = sde, self.gmm.score_fn(sde)
        return self

    def __call__(self, x, t):
        if self._fn is None:
            raise ValueError("the esm target was not bound to a process; build it with "
                             "build_objective(section, data_section, sde).")
        return self._fn(x.double(), t.double()).to(x.dtype)


def bind_objective(objective, sde):
    """Give an ESM objective's oracle target the model's process (other objectives are returned unchanged).
    ``build_objective(section, data_section, sde)`` does this itself; kept for callers that build first."""
    target = getattr(objective, "keywords", {}).get("target_score")
    if isinstance(target, _GMMScore):
        target.bind(sde)
    return objective


def build_data(section: dict, x: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
    """data section -> (float32 tensor [N, *dims], scaler or None); ``load_data`` without the data_info."""
    x, scaler, _ = load_data(section, x)
    return x, scaler


def load_data(section: dict, x: torch.Tensor | None = None) -> tuple[torch.Tensor, Any, dict]:
    """data section -> (float32 tensor [N, *dims] in model units, scaler or None, data_info). Data with NaN/inf
    is refused here, and so is a 4-D array that looks channels-last [N, H, W, C] (unless data.layout=nchw).
    ``x`` given (``train(data=...)``) replaces the section's source; the checks and data.scale still apply.

    ``scale: [lo, hi]`` maps the data's range (data_info["range"]: the known [0, levels - 1] of a quantised
    image set, else the data's [min, max]) affinely onto [lo, hi] (e.g. images to [-1, 1], DDPM); the returned
    scaler's ``inverse`` maps samples back. data_info (``scorelab.data.load_dataset``) is stored with the run.
    """
    from .data import channels_last_hint, data_info, load_dataset

    g = torch.Generator().manual_seed(section["seed"])
    source = section["path"] if section["path"] is not None else section["name"]
    info = None
    if x is None:
        where = Path(source) if section["path"] is not None else source  # a path never means a built-in name
        x, info = load_dataset(where, n=section["n"], generator=g, split=section.get("split"))
    source = source or "given to train(data=...)"
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    x = x.float()
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"data {source!r} must be an array [N, *dims] with N >= 1, got shape {list(x.shape)}.")
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        rows = int(bad.reshape(x.shape[0], -1).any(1).sum())
        raise ValueError(f"data {source!r} contains {int(bad.sum())} NaN/inf value(s) in {rows} example(s); "
                         "drop or impute them before training.")
    hint = channels_last_hint(x.shape) if section.get("layout", "auto") == "auto" else None
    if hint:
        raise ValueError(f"data {source!r}: {hint}")
    if info is None:
        info = data_info(x, source)
    scaler = None
    if section["scale"] is not None:
        scaler = make_scaler(x, *section["scale"], value_range=info["range"])
        x = scaler.forward(x)
    return x, scaler, info


def make_scaler(x: torch.Tensor, lo: float, hi: float, value_range=None):
    """The AffineScaler mapping the data's range onto [lo, hi]: ``value_range`` = (a, b) when the range is
    known (quantised images: [0, levels - 1]), else [x.min(), x.max()]."""
    from .data import AffineScaler

    if value_range is None:
        return AffineScaler.fit(x, lo, hi)
    return AffineScaler.from_range(float(value_range[0]), float(value_range[1]), target=(lo, hi))


def scaler_state(scaler) -> dict | None:
    return None if scaler is None else scaler.state_dict()


def scaler_from_state(state: dict | None):
    if state is None:
        return None
    from .data import AffineScaler

    return AffineScaler.from_state_dict(state)
