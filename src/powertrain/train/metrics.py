"""Task metrics through torchmetrics: accuracy, macro precision/recall/F1 and the confusion matrix
for classification; MSE, MAE and R² for regression. The loss is averaged by the trainer.

>>> import torch
>>> m = TaskMetrics("multiclass", num_classes=3)
>>> m.update(torch.tensor([[2.0, 0, 0], [0, 2.0, 0]]), torch.tensor([0, 2]))
>>> m.compute()["accuracy"]
0.5
"""
from __future__ import annotations

import torch


class TaskMetrics:
    def __init__(self, task: str, num_classes: int | None = None):
        self.task, self.metrics = task, None  # reconstruction / language model: loss only
        if task not in ("multiclass", "binary", "regression"):
            return
        import torchmetrics  # 1-3 s to import: only when there are metrics to compute
        from torchmetrics import classification as C

        if task in ("multiclass", "binary"):
            n = 2 if task == "binary" else int(num_classes)
            self.metrics = torchmetrics.MetricCollection({
                "accuracy": C.MulticlassAccuracy(n, average="micro"),
                "precision_macro": C.MulticlassPrecision(n, average="macro"),
                "recall_macro": C.MulticlassRecall(n, average="macro"),
                "f1_macro": C.MulticlassF1Score(n, average="macro"),
                "confusion_matrix": C.MulticlassConfusionMatrix(n),
            })
        else:
            self.metrics = torchmetrics.MetricCollection({
                "mse": torchmetrics.MeanSquaredError(), "mae": torchmetrics.MeanAbsoluteError(),
                "r2": torchmetrics.R2Score()})

    def update(self, outputs: torch.Tensor, target: torch.Tensor) -> None:
        if self.metrics is None:
            return
        outputs, target = outputs.detach(), target.detach()
        if self.task == "binary":
            preds, target = (outputs.reshape(-1) > 0).long(), target.reshape(-1).long()
        elif self.task == "multiclass":
            preds = outputs.argmax(dim=-1)
        else:
            preds, target = outputs.reshape(target.shape).float(), target.float()
        self.metrics.to(preds.device).update(preds, target)

    def compute(self) -> dict:
        if self.metrics is None:
            return {}
        out = {}
        for k, v in self.metrics.compute().items():
            out[k] = v.tolist() if v.dim() else float(v)
        self.metrics.reset()
        return out


SCALARS = {  # the numbers TaskMetrics(task).compute() reports (classification adds a confusion_matrix list)
    "multiclass": ("accuracy", "precision_macro", "recall_macro", "f1_macro"),
    "binary": ("accuracy", "precision_macro", "recall_macro", "f1_macro"),
    "regression": ("mse", "mae", "r2"),
}


def metric_names(task: str, model=None) -> set[str]:
    """The numeric metrics an evaluation of `task` reports: "loss" plus TaskMetrics' numbers, so that a
    recipe's `train.early_stop.metric` can be checked before training. With `model`, also the loss's
    other names that `loss_names` adds to eval.json (reconstruction: "mse" or "elbo_nats").

    >>> sorted(metric_names("regression"))
    ['loss', 'mae', 'mse', 'r2']
    >>> sorted(metric_names("reconstruction", torch.nn.Identity()))
    ['loss', 'mse']
    """
    names = {"loss", *SCALARS.get(task, ())}
    if model is not None and task == "reconstruction":
        names |= set(loss_names(model, task, 1.0))
    return names


def loss_names(model, task: str, loss: float) -> dict:
    """A reconstruction run's evaluation loss under the name of what it measures (the other tasks' metrics
    are TaskMetrics'): {"mse": loss} for a model trained on the Trainer's default loss (an autoencoder: the
    mean squared error over all values, in the data's units), {"elbo_nats": ...} for a model with
    `elbo_nats(loss)` (a VAE, whose loss is its negative ELBO per sample), else {}.

    >>> loss_names(torch.nn.Identity(), "reconstruction", 0.25)
    {'mse': 0.25}
    >>> loss_names(torch.nn.Identity(), "multiclass", 0.25)
    {}
    """
    if task != "reconstruction":
        return {}
    if hasattr(model, "elbo_nats"):
        elbo = model.elbo_nats(loss)
        return {} if elbo is None else {"elbo_nats": elbo}
    return {"mse": loss} if getattr(model, "compute_loss", None) is None else {}
