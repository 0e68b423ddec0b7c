"""Train the K folds of one method together, as one stacked model, with the numbers of K runs.

The folds of a cross-validation train one architecture on different patients. A step of a small
MIL model is a few hundred tiny tensor operations, so on a CPU (and even more on a GPU) its time
goes to Python and operator dispatch, not arithmetic. Here the folds' parameters are stacked
along a new first dimension, one :func:`torch.func.vmap` of the model's forward pass runs every
fold's bags at once, and one optimiser step updates every fold: K times fewer Python steps.

Each fold gets what :func:`csmil.mil.training.fit` gives it when trained alone:

* its initial weights (its model is built from its own seed, then stacked);
* its bags, their order and its validation bags, from its own generators;
* its dropout noise (:class:`~csmil.mil.models.layers.FoldDropout`), drawn before the step from
  a generator holding the state torch's global generator has in the fold trained alone, in the
  same order and shapes;
* Adam with L2 weight decay, the arithmetic of :class:`torch.optim.Adam`, with the fold's own
  step count: a fold whose epoch has fewer steps than another's is not updated at all (not even
  by its moments) in the steps it has no bags for;
* model selection on its validation loss, its history and its selected weights.

The one difference is padding: a step's bags are padded to the longest bag of all folds, which
every model ignores up to float rounding (see :mod:`csmil.mil.models.base`). So the folds agree
with one-at-a-time training up to float rounding (``tests/test_foldbatch.py``).

A fold's ``seconds`` and training memory in its history are its share (1/K) of the epoch and of
the peak of the K folds trained together.

Models qualify when their class says :attr:`~csmil.mil.models.MILModel.fold_batchable` and
their dropouts are either all :class:`~csmil.mil.models.layers.FoldDropout` on bag vectors or
all drawn by the model itself (:func:`can_batch`); :func:`csmil.mil.training.train_folds`
trains the others fold by fold. A model that draws random numbers of its own in its forward
pass (DTFD-MIL's pseudo-bags, HIPT's dropout inside its transformer layers) qualifies by
drawing them outside: ``stacked_draws(mask, n, b, generator)`` returns them for one fold's
own ``(B_k, N_k)`` mask, padded to the stacked batch, as buffers it then reads
(:func:`model_draws`); such a model's dropouts are all
:class:`~csmil.mil.models.layers.NoiseDropout` it draws itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from csmil import SCALES
from csmil.mil.bags import PatientBagSource, validation_positions
from csmil.mil.loss import bag_nll, model_loss
from csmil.mil.models import MILBatch, MILModel
from csmil.mil.models.layers import FoldDropout, NoiseDropout, draw_noise
from csmil.mil.results import HISTORY_COLUMNS, MEMORY_COLUMNS
from csmil.runtime import TrainingMemory, progress

if TYPE_CHECKING:
    from csmil.mil.training import TrainSettings

log = logging.getLogger(__name__)


@dataclass
class FoldRun:
    """One fold's part of a batched training.

    Attributes:
        model: the fold's model, built from its seed; holds the selected weights afterwards.
        train_w: positions of its training patients in the shared bag source.
        val_w: positions of its validation patients (may be empty: select on training loss).
        train_rng: its generator of training bags and their order.
        val_rng: its generator of validation bags.
        torch_rng: a generator in the state torch's global generator (of the device) had
            right after the model was built (the fold's dropout noise comes from it).
        cpu_rng: the same for torch's CPU generator (random draws a model makes on the CPU,
            such as DTFD-MIL's pseudo-bags); default: ``torch_rng`` on a CPU device.
    """

    model: MILModel
    train_w: np.ndarray
    val_w: np.ndarray
    train_rng: np.random.Generator
    val_rng: np.random.Generator
    torch_rng: torch.Generator
    cpu_rng: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.cpu_rng is None:
            if self.torch_rng.device.type != "cpu":
                raise ValueError("FoldRun needs cpu_rng when torch_rng is not a CPU generator")
            self.cpu_rng = self.torch_rng


def can_batch(model: nn.Module) -> bool:
    """Whether the folds of ``model``'s kind can be trained as one stacked model."""
    if not getattr(type(model), "fold_batchable", False):
        return False
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    if hasattr(model, "stacked_draws"):  # the model draws all of its dropout noise itself
        return all(isinstance(m, NoiseDropout) and not isinstance(m, FoldDropout) for m in dropouts)
    return all(isinstance(m, FoldDropout) for m in dropouts)


def global_generator_copy(device: torch.device) -> torch.Generator:
    """A new generator in the current state of torch's global generator for ``device``."""
    device = torch.device(device)
    gen = torch.Generator(device=device)
    state = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
    gen.set_state(state)
    return gen


class StackedAdam:
    """:class:`torch.optim.Adam` (L2 weight decay, no amsgrad) over parameters stacked by fold.

    The update is the element-wise arithmetic of torch's single-tensor Adam, with the bias
    corrections of each fold's own step count; :meth:`step` updates only the folds marked
    active (the others keep their weights and moments).
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        n_folds: int,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = list(params)
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.weight_decay = weight_decay
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = np.zeros(n_folds, dtype=np.int64)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _per_fold(self, values: list[float], like: Tensor) -> Tensor:
        # float32 per fold, as torch casts its Python-float scalars; shaped to broadcast.
        t = torch.tensor(values, dtype=like.dtype, device=like.device)
        return t.reshape(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, active: np.ndarray) -> None:
        """One Adam step for the folds where ``active`` (bool, (K,)) is True."""
        active = np.asarray(active, dtype=bool)
        self.steps[active] += 1
        steps = [float(max(s, 1)) for s in self.steps]  # torch takes the step as a float
        step_size = [-(self.lr / (1 - self.beta1**s)) for s in steps]
        bc2_sqrt = [(1 - self.beta2**s) ** 0.5 for s in steps]
        everyone = bool(active.all())
        for i, param in enumerate(self.params):
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            exp_avg = self.exp_avg[i].lerp(grad, 1 - self.beta1)
            exp_avg_sq = (
                self.exp_avg_sq[i].mul(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            )
            denom = (exp_avg_sq.sqrt() / self._per_fold(bc2_sqrt, param)).add_(self.eps)
            # addcdiv_'s order of operations: param + (value * exp_avg) / denom
            new = param + (self._per_fold(step_size, param) * exp_avg) / denom
            if not everyone:
                keep = torch.as_tensor(active, device=param.device)
                keep = keep.reshape(-1, *([1] * (param.dim() - 1)))
                new = torch.where(keep, new, param)
                exp_avg = torch.where(keep, exp_avg, self.exp_avg[i])
                exp_avg_sq = torch.where(keep, exp_avg_sq, self.exp_avg_sq[i])
            param.copy_(new)
            self.exp_avg[i], self.exp_avg_sq[i] = exp_avg, exp_avg_sq


def _dropout_order(model: MILModel, source: PatientBagSource) -> list[tuple[str, FoldDropout, int]]:
    """The model's active FoldDropout modules in the order a training forward pass calls them,
    with the width F of their ``(B, F)`` input (found by running the model on one small bag,
    torch's generators restored afterwards)."""
    called: list[tuple[str, FoldDropout, int]] = []
    names = {m: n for n, m in model.named_modules() if isinstance(m, FoldDropout) and m.p > 0}

    def record(module, args):
        x = args[0]
        if x.dim() != 2:
            raise ValueError(
                f"{model.name}: dropout {names[module]!r} acts on a {tuple(x.shape)} tensor; "
                "stacked training draws noise for (bags, features) only"
            )
        called.append((names[module], module, int(x.shape[1])))

    hooks = [m.register_forward_pre_hook(record) for m in names]
    state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(source.device) if source.device.type == "cuda" else None
    try:
        index = np.arange(min(2, source.n_total), dtype=np.int64)[None, :]
        with torch.no_grad():
            model.train()
            model(source.collate(index))
    finally:
        for h in hooks:
            h.remove()
        torch.set_rng_state(state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, source.device)
    return called


def _stack_index(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Bags of every fold, (B_k, N_k) each, as one (K, B, N) index (-1 = padding) and the
    (K, B) bool of which rows are real bags."""
    b = max(len(p) for p in parts)
    n = max((p.shape[1] for p in parts if len(p)), default=1)
    index = np.full((len(parts), b, max(n, 1)), -1, dtype=np.int64)
    real = np.zeros((len(parts), b), dtype=bool)
    for k, p in enumerate(parts):
        if len(p):
            index[k, : len(p), : p.shape[1]] = p
            real[k, : len(p)] = True
    return index, real


def _own_mask(part: np.ndarray) -> Tensor:
    """The ``(B_k, N_k)`` mask a fold's bags get when collated alone (trailing columns that
    are padding in every bag dropped, as :meth:`PatientBagSource.collate` does)."""
    valid = part >= 0
    return torch.from_numpy(valid[:, : int(valid.sum(axis=1).max(initial=0))])


def model_draws(
    model: MILModel,
    runs: Sequence[FoldRun],
    parts: Sequence[np.ndarray],
    stacked: np.ndarray,
    generators: Sequence[torch.Generator | None],
) -> dict[str, Tensor]:
    """The random inputs a model draws inside its forward pass (``model.stacked_draws``, e.g.
    DTFD-MIL's pseudo-bags), drawn per fold on the fold's own bags from its generator and
    padded to the stacked batch; {} for models without any."""
    if not hasattr(model, "stacked_draws"):
        return {}
    k, b, _ = stacked.shape
    n = int((stacked >= 0).sum(axis=2).max(initial=0))  # the stacked batch's collated width
    per_fold: dict[str, list[Tensor]] = {}
    empty = None
    for part, gen in zip(parts, generators, strict=True):
        if len(part):
            drawn = model.stacked_draws(_own_mask(part), n, b, gen)
        else:  # a fold with no bags in this step: any values, its loss is not counted
            empty = empty or model.stacked_draws(torch.zeros((0, 0), dtype=torch.bool), n, b, gen)
            drawn = empty
        for name, value in drawn.items():
            per_fold.setdefault(name, []).append(value)
    return {
        name: torch.stack(v).to(runs[0].model.feature_mean.device) for name, v in per_fold.items()
    }


def _validation_losses(
    runs: Sequence[FoldRun],
    source: PatientBagSource,
    run_batch,
    labels: Tensor,
    batch_bags: int,
    n_val_bags: int = 1,
) -> list[float]:
    """Each fold's mean NLL over ``n_val_bags`` bags per validation patient (eval mode, no
    gradient; NaN for a fold without validation patients), as :func:`csmil.mil.training.fit`
    computes it."""
    model = runs[0].model
    val_ws = [validation_positions(r.val_w, n_val_bags) for r in runs]
    index = [
        source.sample(w, r.val_rng) if len(w) else None for w, r in zip(val_ws, runs, strict=True)
    ]
    empty = np.zeros((0, 1), dtype=np.int64)
    losses: list[list[Tensor]] = [[] for _ in runs]
    model.eval()
    try:
        with torch.no_grad():
            for g in range(0, max(len(w) for w in val_ws), batch_bags):
                parts = [ix[g : g + batch_bags] if ix is not None else empty for ix in index]
                stacked, real = _stack_index(parts)
                label = torch.zeros(real.shape, dtype=torch.float32, device=source.device)
                for k, w in enumerate(val_ws):
                    label[k, : len(parts[k])] = labels[w[g : g + batch_bags]]
                draws = model_draws(model, runs, parts, stacked, [None] * len(runs))
                _, prob = run_batch(stacked, label, draws)
                nll = bag_nll(prob, label)
                for k, part in enumerate(parts):
                    losses[k].append(nll[k, : len(part)])
    finally:
        model.train()
    return [
        float(torch.cat(x).mean()) if len(r.val_w) else np.nan
        for x, r in zip(losses, runs, strict=True)
    ]


def fit_folds(
    runs: Sequence[FoldRun],
    source: PatientBagSource,
    settings: TrainSettings,
    desc: str = "training",
) -> list[pd.DataFrame]:
    """:func:`csmil.mil.training.fit` for every fold of ``runs`` at once (see the module
    docstring). Leaves each run's model holding its selected weights; returns the histories."""
    if not runs:
        return []
    base = runs[0].model
    if not all(can_batch(r.model) for r in runs):
        raise ValueError(f"{base.name} cannot be trained as a stacked model; train fold by fold")
    n_folds, device, acc = len(runs), source.device, settings.accumulate
    memory = TrainingMemory(device).start()
    names = [n for n, _ in base.named_parameters()]
    params = {
        n: torch.stack([r.model.get_parameter(n).detach() for r in runs]).requires_grad_()
        for n in names
    }
    buffers = {
        n: torch.stack([r.model.get_buffer(n) for r in runs]) for n, _ in base.named_buffers()
    }
    opt = StackedAdam(
        list(params.values()),
        n_folds,
        lr=settings.lr,
        betas=(0.9, 0.999),
        weight_decay=settings.weight_decay,
    )
    dropouts = _dropout_order(base, source)
    # a model's own draws (stacked_draws) come from the fold's generator of the device when
    # they stand for dropout noise (HIPT), else from its CPU generator (DTFD-MIL's pseudo-bags)
    on_device = getattr(base, "stacked_draws_generator", "cpu") == "device"
    draw_generators = [r.torch_rng if on_device else r.cpu_rng for r in runs]
    labels = torch.as_tensor(source.labels, dtype=torch.float32, device=device)

    def per_fold(params, buffers, noise, features, clusters, mask, label):
        batch = MILBatch(
            features=dict(zip(SCALES, features, strict=True)), clusters=clusters, mask=mask
        )
        out = functional_call(base, {**params, **buffers, **noise}, (batch,))
        return model_loss(out, label), out.prob

    forward = vmap(per_fold, randomness="error")

    def run_batch(index: np.ndarray, label: Tensor, noise: dict[str, Tensor]):
        k, b, n = index.shape
        batch = source.collate(index.reshape(k * b, n))
        n = batch.mask.shape[1]  # collate drops columns that are padding in every bag
        features = tuple(batch.features[s].reshape(k, b, n, -1) for s in SCALES)
        return forward(
            params,
            buffers,
            noise,
            features,
            batch.clusters.reshape(k, b, n),
            batch.mask.reshape(k, b, n),
            label,
        )

    def fold_noise(parts: Sequence[np.ndarray], b: int) -> dict[str, Tensor]:
        # per fold, in the order the fold trained alone draws it: module by module, (B_k, F)
        noise: dict[str, list[Tensor]] = {f"{name}.noise": [] for name, _, _ in dropouts}
        for run, part in zip(runs, parts, strict=True):
            for name, module, width in dropouts:
                z = draw_noise((len(part), width), module.p, device, run.torch_rng)
                noise[f"{name}.noise"].append(nn.functional.pad(z, (0, 0, 0, b - len(part))))
        return {name: torch.stack(z) for name, z in noise.items()}

    histories: list[list[tuple]] = [[] for _ in runs]
    best_score = np.full(n_folds, np.inf)
    best_epoch = np.zeros(n_folds, dtype=np.int64)
    best_state: list[dict[str, Tensor] | None] = [None] * n_folds
    base.train()
    for epoch in progress(range(1, settings.epochs + 1), desc=desc, total=settings.epochs):
        te = time.perf_counter()
        orders = [r.train_w[r.train_rng.permutation(len(r.train_w))] for r in runs]
        index = [source.sample(o, r.train_rng) for o, r in zip(orders, runs, strict=True)]
        totals = torch.zeros(n_folds, dtype=torch.float64, device=device)
        for g in range(0, max(len(o) for o in orders), acc):
            parts = [ix[g : g + acc] for ix in index]
            stacked, real = _stack_index(parts)
            label = torch.zeros(real.shape, dtype=torch.float32, device=device)
            for k, o in enumerate(orders):
                label[k, : len(parts[k])] = labels[o[g : g + acc]]
            noise = fold_noise(parts, stacked.shape[1])
            noise |= model_draws(base, runs, parts, stacked, draw_generators)
            loss, _ = run_batch(stacked, label, noise)
            fold_loss = (loss * torch.as_tensor(real, device=device)).sum(dim=1)  # (K,)
            opt.zero_grad()
            fold_loss.sum().backward()
            opt.step(real.any(axis=1))
            totals += fold_loss.detach().double()
        train_loss = (totals.cpu().numpy() / [len(o) for o in orders]).tolist()
        val_loss = _validation_losses(
            runs, source, run_batch, labels, settings.eval_batch_bags, settings.n_val_bags
        )
        seconds = (time.perf_counter() - te) / n_folds
        peak = memory.peak_mb() / n_folds
        for k, run in enumerate(runs):
            has_val = len(run.val_w) > 0
            score = val_loss[k] if has_val else train_loss[k]
            if score <= best_score[k]:  # a later tie wins, as in the authors' code
                best_score[k], best_epoch[k] = score, epoch
                best_state[k] = {n: p[k].detach().clone() for n, p in params.items()}
            histories[k].append((epoch, train_loss[k], val_loss[k], seconds, peak))
        log.info(
            "%s epoch %d/%d: train loss %s, validation loss %s",
            desc,
            epoch,
            settings.epochs,
            " ".join(f"{x:.4f}" for x in train_loss),
            " ".join(f"{x:.4f}" for x in val_loss),
        )
    out = []
    for k, run in enumerate(runs):
        if best_state[k] is None:
            raise FloatingPointError(
                f"{desc} fold {k}: the loss was NaN in every epoch; lower the lr"
            )
        with torch.no_grad():
            for n, p in run.model.named_parameters():
                p.copy_(best_state[k][n])
        hist = pd.DataFrame(
            histories[k], columns=[*HISTORY_COLUMNS[:4], MEMORY_COLUMNS[memory.kind]]
        )
        hist.insert(4, "best", hist["epoch"] == best_epoch[k])
        out.append(hist)
    return out
