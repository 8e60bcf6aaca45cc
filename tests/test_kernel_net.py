"""The learned kernel estimator (mzsr.estimation.kernel_net): its Gaussian convention, the released
weights (models/kernel_net_x2.safetensors) on images it never saw and their provenance, the
estimate_kernel path, and its training (mzsr.training.kernel_net, rule train_kernel_estimator)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import skimage.data
import torch

from mzsr import MZSRError
from mzsr.degradation.degrade import degrade, to_uint8
from mzsr.degradation.kernels import (
    analytic_kernel,
    gaussian_kernel,
    kernelgan_center,
    random_kernel,
    random_kernel_rng,
)
from mzsr.estimation import kernel_net
from mzsr.estimation.estimate import estimate_kernel, kernel_error
from mzsr.facts import KERNEL_NET_WEIGHTS
from mzsr.files.images import write_png
from mzsr.files.released import MODELS_ENV, available, header_metadata, release_info
from mzsr.training import kernel_net as kernel_net_training
from conftest import REPO, SHARED_DATA, run_snakemake


def test_covariance_renders_as_gaussian_kernel():
    """The estimator's (row, column) covariance and `gaussian_kernel`'s (l1, l2, theta) are one kernel."""
    for l1, l2, theta in [(1.0, 4.0, 0.3), (0.7, 2.5, -2.0), (3.0, 3.0, 1.0)]:
        sigma = kernel_net_training.covariance(l1, l2, theta)[None].double()
        k = kernel_net.gaussian_from_covariance(sigma)[0].numpy()
        np.testing.assert_allclose(k, gaussian_kernel(l1, l2, theta, 11), atol=1e-8)


def _lr(hr_u8, kernel):
    return to_uint8(degrade(hr_u8 / 255.0, kernel, 2, "direct")) / 255.0


def test_shipped_estimator_beats_the_mean_kernel_on_unseen_images():
    """Four scikit-image photos (none in the training folders), each under two random rk kernels: the
    estimate's kernel error is well below that of the best fixed guess (the family's mean kernel)."""
    net = kernel_net.load()
    mean = np.mean([random_kernel(random_kernel_rng(0, f"__mean_{i}"), 2) for i in range(300)], axis=0)
    ours, guess = [], []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        hr = getattr(skimage.data, name)()[:384, :384]
        for seed in (1, 2):
            truth = random_kernel(random_kernel_rng(seed, name), 2)
            est = kernel_net.estimate(_lr(hr, truth), net)
            ours.append(kernel_error(est, truth))
            guess.append(kernel_error(mean, truth))
    assert np.mean(ours) < 0.75 * np.mean(guess), (np.mean(ours), np.mean(guess))  # shipped weights: 0.71


def test_estimate_kernel_learned_conventions():
    hr = skimage.data.astronaut()
    lr = _lr(hr, gaussian_kernel(4.0, 1.0, np.pi / 4, 11))
    est = estimate_kernel(lr, 2)  # the default method
    k = est.kernel
    assert est.method == "learned" and est.iterations == 0 and est.scale == 2 and k.shape == (11, 11)
    assert k.min() >= 0 and k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(k), (5, 5), atol=1e-6)
    kg = est.kernelgan  # (in a frame padded for the half-pixel shift)
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(kg), kernelgan_center(kg.shape), atol=1e-3)
    # rows and columns the right way round: closer to the true kernel than to its transpose (shipped
    # weights: 0.26). (Diagonal anisotropy is read weakly: docs/results.md, "Blind SR".)
    wide_rows = _lr(hr, gaussian_kernel(4.0, 1.0, 0.0, 11))
    k0 = estimate_kernel(wide_rows, 2).kernel
    assert kernel_error(k0, gaussian_kernel(4.0, 1.0, 0.0, 11)) < 0.5 * kernel_error(
        k0, gaussian_kernel(4.0, 1.0, np.pi / 2, 11)
    )
    x4 = estimate_kernel(lr, 4)
    np.testing.assert_allclose(x4.kernel, analytic_kernel(k), atol=1e-12)


def test_training_writes_loadable_weights_with_provenance(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "train"
    images.mkdir()
    for i in range(3):
        write_png(images / f"img{i}.png", (rng.random((40, 48, 3)) * 255).astype(np.uint8))
    out = tmp_path / "net.safetensors"
    cfg = {"iterations": 2, "batch": 2, "lr_size": 16, "seed": 0, "soft_content": [0.0, 0.5]}
    metadata = kernel_net_training.train(images, out, cfg, log=lambda line: None)
    assert header_metadata(out) == metadata
    provenance = metadata["provenance"]
    assert provenance["images"] == 3 and metadata["config"]["iterations"] == 2 and metadata["step"] == 2
    assert metadata["config"] == {**kernel_net_training.KERNEL_ESTIMATOR_DEFAULTS, **cfg}  # the settings, all
    assert metadata["source"] == "kernel_estimator" and metadata["scale"] == 2
    assert provenance["images_sha256"] == kernel_net_training.image_digest(sorted(images.glob("*.png")))
    assert [(m["seed"], m["soft_content"]) for m in provenance["members"]] == [(0, 0.0), (0, 0.5)]
    assert all(np.isfinite(m["final_training_kernel_error"]) for m in provenance["members"])
    assert torch.get_num_threads() == 2  # kernel_estimator.threads (1) holds while training only
    nets = kernel_net.load(out)
    assert len(nets) == 2
    for net in nets:
        sigma = net(torch.rand(1, 3, 24, 24))
        assert sigma.shape == (1, 2, 2) and bool(torch.all(torch.linalg.eigvalsh(sigma) > 0))
    # one network's plain state dict (a single-network file) loads as a one-member ensemble
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in nets[1].state_dict().items()}, str(tmp_path / "one.safetensors"))
    (one,) = kernel_net.load(tmp_path / "one.safetensors")
    lr = np.random.default_rng(1).random((40, 40, 3))
    np.testing.assert_array_equal(kernel_net.estimate(lr, [one]), kernel_net.estimate(lr, nets[1:]))


def test_the_ensemble_kernel_is_the_gaussian_of_the_members_mean_covariance():
    """The shipped ensemble's estimate is the Gaussian of its members' mean covariance."""
    nets = kernel_net.load()
    assert len(nets) == len(kernel_net_training.SOFT_CONTENT)
    lr = _lr(skimage.data.chelsea()[:256, :256], gaussian_kernel(2.0, 3.5, 0.4, 11))
    members = [kernel_net.covariance_of(lr, net) for net in nets]
    expected = kernel_net.gaussian_from_covariance(torch.stack(members).mean(0)[None])[0].numpy()
    np.testing.assert_allclose(kernel_net.estimate(lr, nets), expected, atol=1e-12)
    assert not torch.allclose(members[0], members[1], rtol=0.02)  # two networks, not one twice


def test_soft_content_blurs_the_crop_by_a_gaussian_of_the_stated_range():
    """`soften` (training's soft photos) convolves the HR crop with a normalised anisotropic Gaussian:
    a point spreads to the Gaussian, a flat crop stays flat, and its variances stay within range."""
    rng = np.random.default_rng(3)
    point = torch.zeros(3, 41, 41)
    point[:, 20, 20] = 1.0
    for _ in range(5):
        spread = kernel_net_training.soften(point, rng)[0].double()
        assert spread.sum().item() == pytest.approx(1.0) and spread.min() >= 0
        r = torch.arange(41, dtype=torch.float64) - 20
        var_rows = (spread.sum(1) * r**2).sum().item()
        var_cols = (spread.sum(0) * r**2).sum().item()
        assert (
            0.0 < var_rows <= kernel_net_training.SOFT_CONTENT_VARIANCE
            and 0.0 < var_cols <= kernel_net_training.SOFT_CONTENT_VARIANCE
        )
        np.testing.assert_allclose(scipy.ndimage.center_of_mass(spread.numpy()), (20, 20), atol=1e-9)
    flat = torch.full((3, 30, 30), 0.25)
    torch.testing.assert_close(kernel_net_training.soften(flat, rng), flat)
    # a training batch with soft content keeps the shapes and the kernels' own covariances
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    lr, kernels, sigmas = kernel_net_training.training_batch(images, np.random.default_rng(0), 4, 16, soft_content=1.0)
    assert lr.shape == (4, 3, 16, 16) and kernels.shape == (4, 11, 11) and sigmas.shape == (4, 2, 2)


def test_training_and_loading_refuse_what_is_missing(tmp_path):
    with pytest.raises(MZSRError, match="no training images"):
        kernel_net_training.train(tmp_path, tmp_path / "x.safetensors")
    with pytest.raises(MZSRError, match=r"kernel-estimator training: unknown setting\(s\) \['iteration'\]"):
        kernel_net_training.train(tmp_path, tmp_path / "x.safetensors", {"iteration": 3})
    with pytest.raises(
        MZSRError,
        match=r"missing.safetensors: no kernel-estimator weights .*retrain them from the repository's root: "
        r"snakemake train_kernel_estimator --cores 2 --configfile config/kernel_estimator.yaml",
    ):
        kernel_net.load(tmp_path / "missing.safetensors")


def test_large_images_are_estimated_tile_by_tile(monkeypatch):
    """Tiles bound the memory on large photos; the proposals of all tiles are weighed together, so the
    kernel stays close to the one pass over the whole image (which a small image gets exactly)."""
    hr = skimage.data.astronaut()[:320, :320]
    lr = _lr(hr, gaussian_kernel(3.0, 1.0, 0.5, 11))
    net = kernel_net.load()[:1]
    with torch.no_grad():
        whole = net[0](torch.as_tensor(lr).float().permute(2, 0, 1)[None]).double()
        whole = kernel_net.gaussian_from_covariance(whole)
    np.testing.assert_allclose(kernel_net.estimate(lr, net), whole[0].numpy(), atol=1e-7)
    monkeypatch.setattr(kernel_net, "TILE", 64)  # 3 x 3 tiles, the last ones 32 px
    tiled = kernel_net.estimate(lr, net)
    assert np.abs(tiled - whole[0].numpy()).max() < 5e-3 and tiled.sum() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------ the released weights


def test_the_released_weights_say_where_they_come_from_and_how_to_make_them_again():
    """models/kernel_net_x2.safetensors carries its provenance as direct_x2 does (a "released" entry),
    with the command that retrains it; the SR models' listings leave it out."""
    path = REPO / KERNEL_NET_WEIGHTS
    assert kernel_net.weights_path() == path
    info = release_info(path)
    assert info["name"] == "kernel_net_x2" and info["iterations"] == 6000
    said = {"what", "data", "device", "machine", "recipe", "seconds", "date", "config_digest", "images_sha256"}
    assert said <= set(info)
    assert info["command"] == kernel_net.RETRAIN_COMMAND
    assert info["command"] == "snakemake train_kernel_estimator --cores 2 --configfile config/kernel_estimator.yaml"
    assert (REPO / "config" / "kernel_estimator.yaml").is_file()
    meta = header_metadata(path)
    assert meta["config"] == kernel_net_training.KERNEL_ESTIMATOR_DEFAULTS  # the schema's defaults are its recipe
    assert [(m["seed"], m["soft_content"]) for m in info["members"]] == [(0, 0.3), (0, 0.5)]
    assert available() == ["direct_x2"] and available(REPO / "models") == ["direct_x2"]  # SR models only
    assert not (REPO / "mzsr" / "weights").exists()


def test_the_weights_are_found_in_the_models_folder_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv(MODELS_ENV, str(tmp_path))
    assert kernel_net.weights_path() == tmp_path / "kernel_net_x2.safetensors"
    with pytest.raises(MZSRError, match="kernel_net_x2.safetensors: no kernel-estimator weights"):
        kernel_net.load()


# ------------------------------------------------------------------------------------ rule train_kernel_estimator


def test_the_rule_trains_on_every_image_of_a_folder_as_the_training_function_does(tmp_path):
    """A folder source is read where it is, BMPs included (rule train_images copies a folder's PNGs
    only); the rule writes what `train` writes for the same settings, tensor for tensor."""
    import yaml
    from PIL import Image
    from safetensors.torch import load_file

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    (images / "T91").mkdir(parents=True)
    (images / "BSD").mkdir()
    Image.fromarray((rng.random((40, 36, 3)) * 255).astype(np.uint8)).save(images / "T91" / "a.bmp")
    write_png(images / "BSD" / "b.png", (rng.random((36, 44, 3)) * 255).astype(np.uint8))
    cfg = {"iterations": 2, "batch": 2, "lr_size": 16, "seed": 0, "soft_content": [0.3, 0.5], "threads": 1}
    config = {"data": {"train": {"source": str(images)}}, "test_sets": {"photos": "skimage:chelsea"}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "cfg.yaml").write_text(yaml.safe_dump({**config, "kernel_estimator": cfg}))
    run_snakemake(tmp_path / "run", "train_kernel_estimator", "--cores", "1", "--configfile", "cfg.yaml", check=True)
    out = tmp_path / "run" / "results" / "models" / "kernel_net_x2.safetensors"
    metadata = header_metadata(out)
    assert metadata["config"] == cfg and metadata["provenance"]["images"] == 2
    assert metadata["provenance"]["images_sha256"] == kernel_net_training.image_digest(
        [images / "BSD" / "b.png", images / "T91" / "a.bmp"]
    )
    log = (tmp_path / "run" / "logs" / "train_kernel_estimator.log").read_text()
    assert "other images than the released weights" in log and (tmp_path / "run" / "logs" / "benchmarks").is_dir()
    kernel_net_training.train(images, tmp_path / "direct.safetensors", cfg, log=lambda line: None)
    ours, direct = load_file(str(out)), load_file(str(tmp_path / "direct.safetensors"))
    assert ours.keys() == direct.keys() and all(torch.equal(ours[k], direct[k]) for k in ours)
    assert len(kernel_net.load(out)) == 2


def _plan(tmp_path, *targets) -> str:
    """A dry run with config/kernel_estimator.yaml in tmp_path/run, beside a link to the shared folder."""
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)
    (tmp_path / "run").mkdir()
    args = ("-n", "--cores", "2", "--configfile", str(REPO / "config" / "kernel_estimator.yaml"))
    proc = run_snakemake(tmp_path / "run", *targets, *args, check=True)
    return proc.stdout + proc.stderr


@pytest.mark.shared_data
def test_the_reproducing_config_trains_on_the_shared_folder(tmp_path):
    """config/kernel_estimator.yaml: the shared folder (../shared/data/train, relative to the run's folder)
    copied by train_images, every image suffix, then the rule on that copy."""
    out = _plan(tmp_path, "train_kernel_estimator")
    assert "rule train_images:" in out and "rule train_kernel_estimator:" in out, out[-3000:]
    assert "input: resources/data/train" in out
    assert "output: results/models/kernel_net_x2.safetensors" in out


def test_a_normal_run_does_not_train_the_kernel_estimator(tmp_path):
    out = _plan(tmp_path)
    assert "train_images" in out and "train_kernel_estimator" not in out, out[-3000:]


@pytest.mark.shared_data
def test_the_shared_folder_is_what_the_released_weights_read():
    """The released weights' images digest is the shared T91 + BSD200 folder's (every image, BMPs too)."""
    folder = SHARED_DATA / "train"
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".bmp") and p.is_file())
    info = release_info(REPO / KERNEL_NET_WEIGHTS)
    assert len(files) == info["images"] == 291
    assert kernel_net_training.image_digest(files) == info["images_sha256"]
