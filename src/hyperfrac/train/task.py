"""Tasks: what is trained, on which data, with which objective, and how it is evaluated.

A :class:`Task` is chosen once from ``data.kind`` through :data:`TASKS` (a registry, no
if-chains on the kind elsewhere). It owns

* where the prepared dataset lives (:meth:`Task.data_path_for`) and opening it,
* the model factory (:meth:`Task.build_model`) and the training loader,
* the objective (:meth:`Task.objective`), the one definition of the training loss that the
  trainer, the analyses and the compare calibration all call,
* the evaluator (:meth:`Task.evaluate`, summed over ranks) and the run summary fields,
* the unit it reports: tokens for a language model, images for a classifier.

Tasks:
    ``text``                     :class:`LanguageModelTask` (decoder LM, next-token CE + MoE aux)
    ``fashion_mnist``, ``mnist5k`` :class:`ImageClassificationTask` (ViT, cross-entropy)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class Objective(NamedTuple):
    """One micro-batch's training signal."""

    loss: Tensor  # the task loss (CE), a 0-d tensor
    aux_loss: Tensor  # added to the loss for backward (MoE balance + z losses; 0 otherwise)
    stats: dict[str, Tensor]  # extra statistics to log (MoE load), may be empty


def sum_over_ranks(device: torch.device, *values: float) -> list[float]:
    """Each value summed over the ranks (one float64 all-reduce; collective)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class Task:
    """Base class; subclasses register under one or more ``data.kind`` values."""

    #: what ``tokens`` counts in logs and summaries ("tok" or "img")
    unit: ClassVar[str]
    #: the plural spelled out in messages ("tokens", "images")
    unit_name: ClassVar[str]
    #: validation metrics shown on the console, in order
    shown_metrics: ClassVar[tuple[str, ...]]

    def __init__(self, cfg: Any, *, rank: int = 0, world_size: int = 1) -> None:
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.data_path = self.data_path_for(cfg)
        self.bytes_per_token: float | None = None
        self.open_data()

    # --------------------------------------------------------------------- data
    @classmethod
    def data_path_for(cls, cfg: Any) -> Path:
        """The prepared dataset folder: ``data.path`` when set, else the cache folder."""
        raise NotImplementedError

    @classmethod
    def ensure_data(cls, cfg: Any, log: Callable[[str], None] = print) -> None:
        """Prepare the config's built-in dataset on first use (nothing for ``data.path``)."""
        raise NotImplementedError

    def open_data(self) -> None:
        """Open (memory-map) the train and validation data and check them against the model."""
        raise NotImplementedError

    def make_loader(self):
        """The stateful, rank-sharded training loader (``next_batch``, ``state_dict``)."""
        raise NotImplementedError

    @classmethod
    def sample_size_for(cls, cfg: Any) -> int:
        """Units per sample: tokens per sequence, or 1 per image."""
        raise NotImplementedError

    @classmethod
    def units_per_step_for(cls, cfg: Any, world_size: int = 1) -> int:
        """Units one optimizer step trains on (all micro-batches, all ranks)."""
        t = cfg.train
        return t.grad_accum * t.batch_size * cls.sample_size_for(cfg) * world_size

    @property
    def units_per_step(self) -> int:
        return self.units_per_step_for(self.cfg, self.world_size)

    @classmethod
    def random_batch_for(cls, cfg: Any, batch_size: int,
                         generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A batch of the training shape with random content (for timing a step)."""
        raise NotImplementedError

    # -------------------------------------------------------------------- model
    def build_model(self) -> nn.Module:
        from hyperfrac.models import build_model

        return build_model(self.cfg.model)

    @staticmethod
    def objective(model: nn.Module, x: Tensor, y: Tensor) -> Objective:
        raise NotImplementedError

    # --------------------------------------------------------------------- eval
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        """Validation metrics of ``model`` (collective under several ranks)."""
        raise NotImplementedError

    def eval_options(self, device: torch.device) -> dict[str, Any]:
        """Keyword arguments every evaluator takes: batching, precision, this rank's share."""
        cfg = self.cfg
        return {"batch_size": cfg.eval.batch_size, "max_batches": cfg.eval.max_batches,
                "device": device, "precision": cfg.train.precision, "rank": self.rank,
                "world_size": self.world_size}

    def summary_fields(self, last_val: dict[str, Any] | None) -> dict[str, Any]:
        """The validation fields of ``summary.json``."""
        v = last_val or {}
        return {"val_loss": v.get("loss"), "val_bpb": v.get("bpb")}


class LanguageModelTask(Task):
    """Next-token prediction on a prepared token stream; reports bits per byte."""

    unit = "tok"
    unit_name = "tokens"
    shown_metrics = ("loss", "bpb")

    @classmethod
    def data_path_for(cls, cfg: Any) -> Path:
        from hyperfrac.data.prepare import dataset_dir

        d = cfg.data
        return Path(d.path) if d.path else dataset_dir(d.corpus, d.vocab_size)

    @classmethod
    def ensure_data(cls, cfg: Any, log: Callable[[str], None] = print) -> None:
        from hyperfrac.data.prepare import dataset_dir, is_ready, prepare

        d = cfg.data
        if d.path or is_ready(dataset_dir(d.corpus, d.vocab_size)):
            return
        if d.corpus != "shakespeare":
            raise FileNotFoundError(
                f"no prepared {d.corpus!r} dataset; run `hyperfrac data prepare --corpus "
                f"{d.corpus} --vocab-size {d.vocab_size} ...` first"
            )
        log(f"preparing the default corpus (Shakespeare + Milton, BPE {d.vocab_size})")
        prepare(d.corpus, d.vocab_size)

    def open_data(self) -> None:
        from hyperfrac.data.dataset import is_ready, validate_text_dataset

        cfg, path = self.cfg, self.data_path
        if not is_ready(path):
            raise FileNotFoundError(
                f"no prepared dataset at {path}; run `hyperfrac data prepare --corpus "
                f"{cfg.data.corpus} --vocab-size {cfg.data.vocab_size}` first, or point "
                "data.path at a prepared dataset folder"
            )
        data = validate_text_dataset(path, vocab_size=cfg.model.vocab_size,
                                     seq_len=cfg.data.seq_len)
        self.meta, self.token_bytes = data.meta, data.token_bytes
        self.train_tokens, self.val_tokens = data.tokens["train"], data.tokens["val"]
        split = self.meta["splits"]["train"]
        self.bytes_per_token = split["bytes"] / split["tokens"]

    def make_loader(self):
        from hyperfrac.data.loader import TokenLoader

        cfg = self.cfg
        return TokenLoader(
            self.train_tokens,
            cfg.data.seq_len,
            cfg.train.batch_size,
            seed=cfg.seed,
            rank=self.rank,
            world_size=self.world_size,
        )

    @classmethod
    def sample_size_for(cls, cfg: Any) -> int:
        return cfg.data.seq_len

    @classmethod
    def random_batch_for(cls, cfg: Any, batch_size: int,
                         generator: torch.Generator) -> tuple[Tensor, Tensor]:
        T = cfg.data.seq_len
        x = torch.randint(0, cfg.model.vocab_size, (batch_size, T + 1), generator=generator)
        return x[:, :-1], x[:, 1:]  # (B, T) inputs and shifted targets

    @staticmethod
    def objective(model: nn.Module, x: Tensor, y: Tensor) -> Objective:
        out = model(x, y)
        return Objective(out.loss, out.aux_loss, out.moe_stats)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        from hyperfrac.eval.lm import evaluate_lm

        res = evaluate_lm(model, self.val_tokens, self.token_bytes, seq_len=self.cfg.data.seq_len,
                          **self.eval_options(device))
        if self.world_size > 1:
            nll, n_tok, n_bytes = sum_over_ranks(
                device, res["loss"] * res["tokens"], res["tokens"], res["bytes"]
            )
            res = {
                "loss": nll / n_tok,
                "bpb": nll / math.log(2) / n_bytes,
                "tokens": int(n_tok),
                "bytes": int(n_bytes),
            }
        return res


class ImageClassificationTask(Task):
    """Image classification (ViT): train on the train images, validate on the test set."""

    unit = "img"
    unit_name = "images"
    shown_metrics = ("loss", "accuracy")

    @classmethod
    def data_path_for(cls, cfg: Any) -> Path:
        from hyperfrac.data.vision import image_dataset_dir

        return Path(cfg.data.path) if cfg.data.path else image_dataset_dir(cfg.data.kind)

    @classmethod
    def ensure_data(cls, cfg: Any, log: Callable[[str], None] = print) -> None:
        from hyperfrac.data.vision import image_dataset_dir, prepare_images

        if cfg.data.path or (image_dataset_dir(cfg.data.kind) / "READY").is_file():
            return
        log(f"preparing the image dataset {cfg.data.kind}")
        prepare_images(cfg.data.kind)

    def open_data(self) -> None:
        from hyperfrac.data.vision import check_image_split, load_images

        path, m = self.data_path, self.cfg.model
        self.train_images, self.train_labels = load_images(path, "train")
        self.val_images, self.val_labels = load_images(path, "test")
        for split, images, labels in (("train", self.train_images, self.train_labels),
                                      ("test", self.val_images, self.val_labels)):
            check_image_split(images, labels, num_classes=m.num_classes,
                              image_size=m.image_size, in_channels=m.in_channels,
                              where=f"{path} ({split})")

    def make_loader(self):
        from hyperfrac.data.vision import ImageLoader

        cfg = self.cfg
        return ImageLoader(
            self.train_images,
            self.train_labels,
            cfg.train.batch_size,
            seed=cfg.seed,
            rank=self.rank,
            world_size=self.world_size,
        )

    @classmethod
    def sample_size_for(cls, cfg: Any) -> int:
        return 1

    @classmethod
    def random_batch_for(cls, cfg: Any, batch_size: int,
                         generator: torch.Generator) -> tuple[Tensor, Tensor]:
        m = cfg.model
        x = torch.randn(batch_size, m.in_channels, m.image_size, m.image_size,
                        generator=generator)  # (B, C, H, W)
        return x, torch.randint(0, m.num_classes, (batch_size,), generator=generator)

    @staticmethod
    def objective(model: nn.Module, x: Tensor, y: Tensor) -> Objective:
        logits = model(x)  # (B, classes)
        loss = F.cross_entropy(logits.float(), y)
        return Objective(loss, loss.new_zeros(()), {})

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        from hyperfrac.eval.vision import evaluate_classifier

        res = evaluate_classifier(model, self.val_images, self.val_labels,
                                  **self.eval_options(device))
        if self.world_size > 1:
            nll, correct, n = sum_over_ranks(device, res["loss"] * res["n"], res["correct"],
                                             res["n"])
            res = {**res, "loss": nll / n, "accuracy": correct / n, "correct": int(correct)}
            res["n"] = int(n)
        return res

    def summary_fields(self, last_val: dict[str, Any] | None) -> dict[str, Any]:
        return {**super().summary_fields(last_val),
                "val_accuracy": (last_val or {}).get("accuracy")}


TASKS: dict[str, type[Task]] = {
    "text": LanguageModelTask,
    "fashion_mnist": ImageClassificationTask,
    "mnist5k": ImageClassificationTask,
}
"""``data.kind`` -> task class."""


def task_class(kind: str) -> type[Task]:
    """The task class of a ``data.kind``."""
    try:
        return TASKS[kind]
    except KeyError:
        raise ValueError(f"data.kind={kind!r}; choose one of {sorted(TASKS)}") from None


def build_task(cfg: Any, *, rank: int = 0, world_size: int = 1) -> Task:
    """The task of a run config, with its data opened."""
    return task_class(cfg.data.kind)(cfg, rank=rank, world_size=world_size)


def check_buildable(cfg: Any) -> None:
    """Build the config's model on the meta device (no memory, no data): what ``--dry-run``
    runs, so that a dry run that passes never fails later on a model-shape error (heads that
    do not divide, ``n_fracs`` not dividing ``dim``, ...)."""
    task_class(cfg.data.kind)  # the data kind itself
    from hyperfrac.models import build_model

    with torch.device("meta"):
        build_model(cfg.model)
