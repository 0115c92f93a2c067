"""The image recipes run end to end on small generated files in the real formats: fashion-autoencoder and
fashion-vae (IDX; their MSE / ELBO in eval.json and their PNGs in the run dir), cifar10-cnn (CIFAR-10
binary) and image224-cnn (a PNG folder); the two Keras CNNs have the Keras models' parameter counts."""
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.distributions import Bernoulli, Normal, kl_divergence

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from datafiles import write_cifar_bin, write_idx_dataset, write_image_folder  # noqa: E402

from browser import check_report  # noqa: E402
from powertrain import api, load_recipe, models  # noqa: E402
from powertrain.data import DataMeta  # noqa: E402
from powertrain.errors import DataError  # noqa: E402

QUICK = ["train.max_steps=3", "train.batch_size=8"]


def keras_cnn_params(size: int, channels: list[int], pools: list[int], dense: list[int], classes: int) -> int:
    """Parameters of a Keras Sequential of Conv2D(c, (3, 3)) (valid), MaxPooling2D, Flatten and Dense layers,
    counted as Keras does: (3*3*c_in + 1) * c_out per conv, (n_in + 1) * n_out per dense."""
    total, c_in = 0, 3
    for c, p in zip(channels, pools):
        total += (3 * 3 * c_in + 1) * c
        size, c_in = (size - 2) // (p if p else 1), c
    n_in = size * size * c_in
    for n_out in [*dense, classes]:
        total += (n_in + 1) * n_out
        n_in = n_out
    return total


def recipe_model(name: str, input_shape, classes: int):
    return models.build(load_recipe(name).model.model_dump(), DataMeta(input_shape, "multiclass", classes))


def test_keras_cnns_parameter_counts():
    # seed 000: conv32 (896) pool conv64 (18,496) pool conv64 (36,928) -> 4x4x64 = 1024, dense 64 (65,600), dense 10 (650)
    assert keras_cnn_params(32, [32, 64, 64], [2, 2, 0], [64], 10) == 122_570
    assert models.count_params(recipe_model("cifar10-cnn", (3, 32, 32), 10)) == 122_570
    # seed 004: conv32 (896) conv64 (18,496) conv128 (73,856), each pooled -> 26x26x128 = 86,528,
    # dense 512 (44,302,848), dense num_classes (5,130 for 10)
    assert keras_cnn_params(224, [32, 64, 128], [2, 2, 2], [512], 10) == 44_401_226
    assert models.count_params(recipe_model("image224-cnn", (3, 224, 224), 10)) == 44_401_226


def eval_json(run) -> dict:
    return json.loads((run.dir / "eval.json").read_text())


def test_fashion_autoencoder_reports_test_mse_and_leaves_its_reconstructions(tmp_path):
    written = write_idx_dataset(tmp_path / "fm", n_train=40, n_test=12)
    run = api.train("fashion-autoencoder", [f"data.path={tmp_path / 'fm'}", *QUICK], out=tmp_path / "run", callbacks=[])
    ev = eval_json(run)
    x = torch.from_numpy(written["test"][0]).float().div(255).unsqueeze(1)  # normalize: false, pixels in [0, 1]
    with torch.no_grad():
        mse = float(((run.trainer.model.eval()(x) - x) ** 2).mean())
    assert ev["test"]["mse"] == pytest.approx(mse, rel=1e-5) and ev["test"]["mse"] == ev["test"]["loss"]
    assert "mse" in ev["val"] and ev["figures"] == ["reconstructions.png"]
    assert Image.open(run.dir / "reconstructions.png").size == (1000, 271)  # 10 cells; see test_visualize
    assert not (run.dir / "samples.png").exists()
    check_report(run.dir, {"pictures"})  # its report page, reconstructions included, loads in Chromium


def test_fashion_vae_reports_the_test_elbo_and_leaves_reconstructions_and_samples(tmp_path):
    written = write_idx_dataset(tmp_path / "fm", n_train=40, n_test=12)
    run = api.train("fashion-vae", [f"data.path={tmp_path / 'fm'}", *QUICK], out=tmp_path / "run", callbacks=[])
    ev = eval_json(run)
    x = torch.from_numpy(written["test"][0]).float().div(255).unsqueeze(1)
    vae = run.trainer.model.eval()
    with torch.no_grad():
        recon, mu, logvar = vae(x)  # one batch: the eval noise (generator seeded 0) is the same as in evaluate
    log_px = Bernoulli(probs=recon.flatten(1), validate_args=False).log_prob(x.flatten(1)).sum(1)
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    assert ev["test"]["elbo_nats"] == pytest.approx(float((log_px - kl).mean()), rel=1e-4)
    assert ev["test"]["elbo_nats"] == -ev["test"]["loss"] and "mse" not in ev["test"]
    assert ev["figures"] == ["reconstructions.png", "samples.png"]
    assert Image.open(run.dir / "samples.png").size == (800, 835)  # 64 samples in 8 rows of 8
    check_report(run.dir, {"pictures"})


def test_vae_elbo_names_honestly():
    vae = models.build({"name": "vae", "encoder": [4], "latent": 2, "recon_loss": "mse"}, DataMeta((1, 2, 3), "reconstruction"))
    assert vae.elbo_nats(10.0) == pytest.approx(-10.0 - 6 * 0.5 * 1.8378770664093453)  # log(2 pi), 6 values
    beta = models.build({"name": "vae", "encoder": [4], "beta": 4.0}, DataMeta((1, 2, 3), "reconstruction"))
    assert beta.elbo_nats(10.0) is None  # a beta-VAE's loss is not the negative ELBO


def test_cifar10_cnn_trains_on_cifar_files_in_powertrain_data(tmp_path, monkeypatch):
    monkeypatch.setenv("POWERTRAIN_DATA", str(tmp_path / "datasets"))
    write_cifar_bin(tmp_path / "datasets" / "cifar10", n_per_batch=8)
    run = api.train("cifar10-cnn", QUICK, out=tmp_path / "run", callbacks=[])
    ev = eval_json(run)
    assert run.trainer.data.meta.extra["path"] == str(tmp_path / "datasets" / "cifar10")
    assert 0 <= ev["test"]["accuracy"] <= 1 and ev["step"] == 3 and "figures" not in ev
    assert run.bill["params"] == 122_570
    check_report(run.dir, {"confusion"})


def test_cifar10_cnn_without_files_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("POWERTRAIN_DATA", str(tmp_path))
    with pytest.raises(DataError) as e:
        api.train("cifar10-cnn", QUICK, out=tmp_path / "run", callbacks=[])
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "cifar10") in msg
    assert "cifar-10-binary.tar.gz" in msg and "data.path" in msg


def test_image224_cnn_trains_on_an_image_folder(tmp_path):
    # at 64 x 64 (2.4 M parameters): at 224 x 224 its 44 M parameters and their Adam state make a 0.5 GB checkpoint
    write_image_folder(tmp_path / "images", classes=("cat", "dog", "fish"), per_class=5)
    run = api.train("image224-cnn", [f"data.path={tmp_path / 'images'}", "data.size=64", "train.max_steps=2",
                                     "train.batch_size=4"], out=tmp_path / "run", callbacks=[])
    assert run.trainer.data.meta.input_shape == (3, 64, 64) and run.trainer.data.meta.num_classes == 3
    assert run.bill["params"] == keras_cnn_params(64, [32, 64, 128], [2, 2, 2], [512], 3)
    assert 0 <= eval_json(run)["test"]["accuracy"] <= 1
    check_report(run.dir, {"confusion"})


def test_image224_cnn_without_a_path_says_to_set_it(tmp_path):
    with pytest.raises(DataError) as e:
        api.train("image224-cnn", out=tmp_path / "run", callbacks=[])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("image-folder: data.path is not set; set data.path=DIR, where DIR has one subfolder of "
                          "PNG/JPEG images per class")
