"""``TrainConfig``: every training setting in one flat dataclass, loadable from YAML or TOML.

Precedence: dataclass defaults < config file < command line. Unknown keys are rejected with
close-match suggestions; values are checked in :meth:`TrainConfig.validate` before any work starts.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, unknown_keys_error

if TYPE_CHECKING:
    from .layout import Layout

DTYPES = ("auto", "bf16", "fp16", "fp32")
BACKENDS = ("auto", "cuda", "npu", "cpu")
PP_SCHEDULES = ("1f1b", "gpipe")


@dataclass
class TrainConfig:
    """What to train, on what data, for how long, and how (EfficientLLM optimiser defaults)."""

    variant: str | None = None  # None: the registry's baseline variant (resolved when the config is made)
    size: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides (`--set key=value`)
    data: str | None = None  # token directory / Megatron prefix; None = the embedded corpus
    data_mode: str = "random"  # TokenLoader sampling: random | packed
    seq_len: int | None = None  # None = min(backend default (2048; 256 on CPU), the model's max_seq_len)
    batch_size: int = 8  # global batch in sequences per optimizer step (all ranks, all micro-steps)
    grad_accum: int = 1
    steps: int | None = None
    tokens: float | None = None  # alternative to steps: ceil(tokens / (batch_size * seq_len)) steps
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_steps: int | None = None  # None = 1% of the steps (at least 1, at most 2000)
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 1234
    dtype: str = "auto"  # auto | bf16 | fp16 | fp32 (fp32 weights, autocast to the given dtype)
    backend: str = "auto"  # auto | cuda | npu | cpu
    compile: bool | None = None  # None = per-block torch.compile on CUDA, eager elsewhere; False = --no-compile
    fsdp: bool = False
    tp: int = 1  # tensor-parallel degree (heads / channels split over ranks)
    pp: int = 1  # pipeline stages (layers split over ranks); micro-batches = grad_accum
    cp: int = 1  # context parallel (sequence split; CUDA SDPA only)
    pp_schedule: str = "1f1b"  # 1f1b | gpipe
    activation_checkpointing: bool = False
    fused_loss: bool = True  # chunked linear + cross-entropy that never holds the full logits
    out: str | None = None  # None = runs/{variant}-{size}
    resume: str | None = None  # None | "latest" | a step number
    allow_model_change: bool = False  # resume although the model settings differ from the checkpoint's
    eval_every: int = 200
    eval_batches: int = 8
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    max_bad_steps: int = 3  # consecutive non-finite losses before stopping with a checkpoint
    peak_tflops: float | None = None  # per-device peak for MFU; None = the backend's table
    sample_interval: float = 1.0  # seconds between memory / utilisation / power samples
    tensorboard: bool = True
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.variant is None:
            from ..registry import REGISTRY

            self.variant = REGISTRY.baseline()

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "settings") -> "TrainConfig":
        values = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = set(values) - cls.keys()
        if unknown:
            raise unknown_keys_error(f"training {source}", unknown, cls.keys())
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> "TrainConfig":
        """Load a YAML (.yaml/.yml) or TOML (.toml) file; non-None ``overrides`` win over the file."""
        values = load_config_file(path)
        model = dict(values.get("model") or {})
        model.update(overrides.pop("model", None) or {})
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["model"] = model
        return cls.from_dict(values, source=f"config keys in {path}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    # -- derived values --------------------------------------------------------------------
    def compile_on(self, adapter: Any) -> bool:
        """Whether to compile on ``adapter``'s device: as asked, else by default on CUDA only."""
        if self.compile is None:
            return adapter.device.type == "cuda" and adapter.compile_supported
        return bool(self.compile)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / f"{self.variant}-{self.size}"

    def total_steps(self, seq_len: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        return max(1, math.ceil(float(self.tokens) / (self.batch_size * seq_len)))

    def warmup(self, total: int) -> int:
        if self.warmup_steps is not None:
            return int(self.warmup_steps)
        return max(1, min(2000, total // 100))

    def micro_batch(self, dp_size: int) -> int:
        """Sequences per data-parallel replica per micro-step."""
        return self.batch_size // (dp_size * self.grad_accum)

    def layout(self, world_size: int) -> "Layout":
        """The TP x PP x CP x DP layout of ``world_size`` processes (ConfigError if it cannot be formed)."""
        from .layout import resolve_layout

        return resolve_layout(int(self.tp), int(self.pp), int(self.cp), world_size)

    def validate(self, world_size: int = 1) -> None:
        """Raise ConfigError on any setting that cannot work, before anything is built or loaded."""
        self._check_finite()
        if self.steps is None and self.tokens is None:
            raise ConfigError("give the run a length: --steps N or --tokens N (e.g. --tokens 1e9)")
        if self.steps is not None and self.tokens is not None:
            raise ConfigError("give either --steps or --tokens, not both")
        for name in ("batch_size", "grad_accum", "eval_batches", "keep_checkpoints", "log_every", "max_bad_steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("steps", "tokens", "seq_len", "peak_tflops", "sample_interval"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        for name in ("eval_every", "ckpt_every", "warmup_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be 0 (off) or positive, got {value}")
        if not 0 < self.lr or not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0 (got lr={self.lr}, min_lr={self.min_lr})")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.pp_schedule not in PP_SCHEDULES:
            raise ConfigError(f"unknown --pp-schedule {self.pp_schedule!r}; choose one of {', '.join(PP_SCHEDULES)}")
        replicas = self.layout(world_size).dp
        if self.batch_size % (replicas * self.grad_accum):
            who = f"world size {world_size}" if replicas == world_size else f"data-parallel degree {replicas}"
            raise ConfigError(
                f"batch size {self.batch_size} is not divisible by {who} x grad accumulation "
                f"{self.grad_accum}; the global batch must split evenly into per-device micro-batches "
                f"(e.g. --batch-size {-(-self.batch_size // (replicas * self.grad_accum)) * replicas * self.grad_accum})"
            )
        if self.data is not None and not Path(self.data).expanduser().exists() \
                and not Path(str(self.data) + ".idx").exists():
            raise ConfigError(f"data path {self.data} does not exist (a token directory from `effzoo data tokenize` "
                              "or a Megatron PREFIX); omit --data to train on the embedded corpus")
        if self.resume is not None and self.resume != "latest" and not str(self.resume).isdigit():
            raise ConfigError(f"--resume takes 'latest' or a step number, got {self.resume!r}")


    def _check_finite(self) -> None:
        """Refuse inf/nan in any numeric setting, training or model (``--set``), before anything runs."""
        values = [(f"--{f.name.replace('_', '-')}", getattr(self, f.name)) for f in dataclasses.fields(self)]
        values += [(f"--set {key}", value) for key, value in self.model.items()]
        for name, value in values:
            spelled = isinstance(value, str) and value.strip().lower().lstrip("+-") in ("inf", "infinity", "nan")
            if spelled or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number, got {value}")


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML or TOML mapping of training settings (``model:`` holds model overrides)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            values = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path} must end in .yaml, .yml or .toml")
    except ConfigError:
        raise
    except Exception as exc:  # yaml.YAMLError / tomllib.TOMLDecodeError
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, got {type(values).__name__}")
    return values
