"""Any data into the Trainer: DataLoaders, torch Datasets (map-style, iterable; tuple or dict samples),
Hugging Face datasets and numpy arrays, each through a real fit checked against an independent
reference (a plain PyTorch loop, or the same data given as tensors); resume with the Trainer's sampler
and with a user's DataLoader equals an uninterrupted run."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import powertrain
from powertrain import Trainer, TrainConfig
from powertrain.data import DataBundle
from powertrain.errors import DataError
from interrupt import InterruptAt  # tests/interrupt.py

N, D = 96, 6
_g = torch.Generator().manual_seed(0)
X = torch.randn(N, D, generator=_g)
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


def fit(data, **cfg) -> Trainer:
    torch.manual_seed(1)
    cfg = {"epochs": 2, "batch_size": 32, "lr": 0.05, "precision": "fp32", "device": "cpu", **cfg}  # CPU: bit for bit
    return Trainer(model(), data, TrainConfig(**cfg), callbacks=[], meter=False).fit()


def weights(t: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.model.parameters()]


def same(a: Trainer, b: Trainer) -> bool:
    return all(torch.equal(p, q) for p, q in zip(weights(a), weights(b)))


@pytest.fixture(scope="module")
def tensors_run() -> Trainer:
    """The reference: the same samples as in-memory tensors, batched in the Trainer's seeded order."""
    return fit(DataBundle.from_tensors((X, Y)))


class DictDataset(Dataset):
    """Samples as Hugging Face yields them: a dict of numpy float64 features and an int label."""

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"features": X[i].double().numpy(), "label": int(Y[i]), "id": f"row-{i}"}


class Stream(IterableDataset):
    def __iter__(self):
        yield from zip(X, Y)


def test_dataloader_matches_a_plain_loop():
    loader = DataLoader(TensorDataset(X, Y), batch_size=16)  # its batch size is the run's
    cfg = TrainConfig(epochs=2, optimizer="sgd", lr=0.1, precision="fp32", device="cpu")  # the plain loop's device
    t = Trainer(model(), loader, cfg, callbacks=[], meter=False)
    torch.manual_seed(1)  # dropout draws from the global RNG in both
    t.fit()
    assert t.cfg.batch_size == 16 and t.step == 2 * N // 16 and t.data.meta.num_classes == 2
    ref = model()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    torch.manual_seed(1)
    for _ in range(2):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(ref(x), y).backward()
            opt.step()
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(t.model.parameters(), ref.parameters()))


def test_map_style_dict_samples_equal_tensors(tensors_run):
    t = fit(DictDataset())  # keys inferred: target 'label', input 'features' (the string column is left out)
    assert t.data.meta.input_shape == (D,) and t.data.meta.task == "multiclass" and t.data.meta.num_classes == 2
    assert same(t, tensors_run)  # the Trainer's order, float64 -> float32: the same bits as the tensors


def test_tuple_dataset_and_numpy_arrays_equal_tensors(tensors_run):
    assert same(fit(DataBundle.from_dataset(TensorDataset(X, Y))), tensors_run)
    assert same(fit((X.numpy(), Y.numpy())), tensors_run)


def test_iterable_dataset_counts_and_infers():
    t = fit(Stream())
    assert len(t.data.train) == N and t.step == 2 * 3 and t.data.meta.num_classes == 2
    ref = fit(DataLoader(TensorDataset(X, Y), batch_size=32))  # the same stream, in the same order
    assert same(t, ref)


def test_hugging_face_dataset_equals_tensors(tensors_run):
    datasets = pytest.importorskip("datasets")
    cols = {f"f{i}": X[:, i].tolist() for i in range(D)}
    ds = datasets.Dataset.from_dict({**cols, "label": Y.tolist()})
    data = DataBundle.from_dataset(ds, inputs=[f"f{i}" for i in range(D)], target="label")
    assert data.meta.num_classes == 2 and data.meta.input_shape == (D,)
    t = fit(data)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(weights(t), weights(tensors_run)))


def test_regression_labels_infer_regression():
    y = X[:, :1] * 2.0
    data = DataBundle.from_dataset(TensorDataset(X, y))
    assert data.meta.task == "regression" and data.meta.targets == 1


def test_what_cannot_be_inferred_is_one_line():
    class Pairs(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"a": torch.zeros(2), "b": torch.zeros(2), "c": 0.0}

    with pytest.raises(DataError, match=r"inputs='KEY'.*target='KEY'") as e:
        DataBundle.from_dataset(Pairs())
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="'nope' is not a key"):
        DataBundle.from_dataset(DictDataset(), target="nope")
    with pytest.raises(DataError, match="expected a DataBundle, a DataLoader"):
        Trainer(model(), {"x": X}, TrainConfig(), callbacks=[])


def resumed_equals_uninterrupted(make_data, tmp_path) -> tuple[Trainer, Trainer]:
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, precision="fp32", device="cpu", checkpoint_every_steps=1)
    torch.manual_seed(1)
    whole = Trainer(model(), make_data(), cfg, run_dir=tmp_path / "whole", callbacks=[]).fit()
    torch.manual_seed(1)
    with pytest.raises(powertrain.Interrupted):
        Trainer(model(), make_data(), cfg, run_dir=tmp_path / "cut", callbacks=[InterruptAt(8)]).fit()
    again = Trainer(model(), make_data(), cfg, run_dir=tmp_path / "cut", callbacks=[])
    assert again.resume() and again.step == 7  # mid-epoch 2 (6 steps an epoch)
    again.fit()
    return whole, again


def test_resume_with_the_trainers_sampler_is_bit_equal(tmp_path):
    whole, again = resumed_equals_uninterrupted(DictDataset, tmp_path)
    assert same(whole, again) and again.results == whole.results


def test_resume_with_a_users_shuffling_dataloader_continues_at_its_step(tmp_path):
    seen = []

    class Logged(Dataset):
        def __len__(self):
            return N

        def __getitem__(self, i):
            seen.append(i)
            return X[i], Y[i]

    def loader():
        return DataLoader(Logged(), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))

    whole, again = resumed_equals_uninterrupted(loader, tmp_path)
    assert same(whole, again) and again.results == whole.results
    first_epoch = seen[-N:]  # the resumed run's last epoch: shuffled, each sample once
    assert sorted(first_epoch) == list(range(N)) and first_epoch != list(range(N))
