"""Known answer: on a denoiser whose trained optimum has a closed form, the copier and the difference routes both
recover the true B − A.

The host is ε̂ = W·x_t per latent pixel. Trained to convergence on a set with pixel second moment M, W goes to
W*(M) = E[σ_t]·(E[ᾱ_t]·M + E[1−ᾱ_t]·I)⁻¹ (toy_host.optimal_weight). Set B is set A with one channel mixed into
another (the "feature"), so the truth is ΔW = W*(M_B) − W*(M_A). A full-rank LoRA (rank 4 on a 4×4 weight, alpha 4:
scale 1) can represent it exactly, so what is left is training noise (finite timesteps and noise per step).

Tolerances, measured with these settings: each route is within about 2% of the truth (relative Frobenius norm) and
within about 1% of the other; the test allows 5% and 3%. A copier that forgot to apply A while training B would
land on W*(M_B) − W0 instead, more than 100% away.
"""

from __future__ import annotations

import torch

from lib_copylora.train.config import LoopConfig, NetworkConfig, OptimConfig, OutputConfig, RouteConfig, TrainConfig
from lib_copylora.train.routes import train_copier, train_difference
from toy_host import LinearToyHost, ToySource, optimal_weight, toy_schedule

NAME = "lora_unet_down_blocks_0_attentions_0_proj_in"
IMAGES = 64


def _sets():
    g = torch.Generator().manual_seed(0)
    base_weight = torch.eye(4) * 0.5 + 0.1 * torch.randn(4, 4, generator=g)
    mix = torch.randn(4, 4, generator=g)
    latents_a = torch.einsum("ij,njhw->nihw", mix, torch.randn(IMAGES, 4, 4, 4, generator=g))
    feature = torch.eye(4)
    feature[0, 0], feature[1, 0] = 0.2, 0.8  # B: most of channel 0 moves into channel 1
    latents_b = torch.einsum("ij,njhw->nihw", feature, latents_a)
    return base_weight, latents_a, latents_b


def _config(route: str, out_dir) -> TrainConfig:
    return TrainConfig(
        network=NetworkConfig(rank=4, alpha=4),
        optim=OptimConfig(learning_rate=0.02, scheduler="cosine", weight_decay=0.0, max_grad_norm=0),
        loop=LoopConfig(max_steps=300, seed=1),
        output=OutputConfig(output_dir=out_dir, output_name="feature", save_precision="fp32"),
        route=RouteConfig(route=route))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_copier_and_difference_recover_the_known_difference(tmp_path):
    base_weight, latents_a, latents_b = _sets()
    abar = toy_schedule()
    truth = optimal_weight(latents_b, abar) - optimal_weight(latents_a, abar)
    base_optimum_gap = optimal_weight(latents_b, abar) - base_weight  # what a copier without A would learn

    copier = train_copier(LinearToyHost(base_weight), _config("copier", tmp_path / "c"),
                          ToySource(latents_a, IMAGES), ToySource(latents_b, IMAGES))
    difference = train_difference(LinearToyHost(base_weight), _config("difference", tmp_path / "d"),
                                  ToySource(latents_a, IMAGES), ToySource(latents_b, IMAGES))

    delta_copier = copier.lora.layers[NAME].delta().reshape(4, 4)
    delta_difference = difference.lora.layers[NAME].delta().reshape(4, 4)
    assert _relative(delta_copier, truth) < 0.05
    assert _relative(delta_difference, truth) < 0.05
    assert _relative(delta_copier, delta_difference) < 0.03
    assert _relative(base_optimum_gap, truth) > 0.5  # the test can tell a copier that skipped A
    # the difference route's exact merge concatenates the ranks of A and B
    assert difference.lora.layers[NAME].rank == 8
    assert copier.path.name == "feature.safetensors" and difference.path.exists()


def _quick(route: str, out_dir, **route_options) -> TrainConfig:
    return TrainConfig(network=NetworkConfig(rank=2, alpha=1),
                       optim=OptimConfig(learning_rate=0.01),
                       loop=LoopConfig(max_steps=4, precision="bf16"),
                       output=OutputConfig(output_dir=out_dir, output_name="feature", save_every_n_steps=3,
                                           save_every_n_epochs=1),
                       route=RouteConfig(route=route, keep_parts=True, **route_options))


def test_routes_save_parts_interim_files_and_kohya_metadata(tmp_path):
    from lib_copylora.core.formats import read_lora
    from lib_copylora.core.metadata import read_recipe
    from toy_host import ToyHost

    g = torch.Generator().manual_seed(0)
    sources = ToySource(torch.randn(4, 4, 4, 4, generator=g), 2), ToySource(torch.randn(4, 4, 4, 4, generator=g), 2)
    copier = train_copier(ToyHost(), _quick("copier", tmp_path / "c"), *sources)
    difference = train_difference(ToyHost(), _quick("difference", tmp_path / "d", new_rank=3), *sources)

    # 2 batches per epoch: epochs end after steps 2 and 4 (the end: no interim file), step 3 is the step save
    assert sorted(p.name for p in copier.written) == [
        "feature-000001.safetensors", "feature-step00000003.safetensors", "feature.safetensors",
        "feature_A-000001.safetensors", "feature_A-step00000003.safetensors", "feature_A.safetensors"]
    assert sorted(p.name for p in difference.written) == [
        "feature.safetensors", "feature_A-000001.safetensors", "feature_A-step00000003.safetensors",
        "feature_A.safetensors", "feature_B-000001.safetensors", "feature_B-step00000003.safetensors",
        "feature_B.safetensors"]
    interim = read_lora(tmp_path / "d" / "feature_B-step00000003.safetensors").metadata
    assert interim["ss_steps"] == "3" and read_recipe(interim)["phases"] == {"B": 3}

    saved = read_lora(difference.path)
    meta = saved.metadata
    assert {l.rank for l in saved.layers.values()} == {3}  # re-ranked by SVD
    assert meta["ss_network_dim"] == "3" and meta["ss_output_name"] == "feature"
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_optimizer"] == "torch.optim.adamw.AdamW" and meta["ss_mixed_precision"] == "bf16"
    assert meta["ss_steps"] == "4" and meta["ss_lr_scheduler"] == "constant" and meta["ss_min_snr_gamma"] == "None"
    assert meta["ss_v_parameterization"] == "False"
    assert float(meta["ss_training_finished_at"]) >= float(meta["ss_training_started_at"]) > 1.6e9
    recipe = read_recipe(meta)
    assert recipe["route"] == "difference" and recipe["phases"] == {"A": 4, "B": 4}
    assert recipe["merge"]["ratios"] == [1.0, -1.0]
    assert read_recipe(read_lora(copier.path).metadata)["route"] == "copier"
    part = read_lora(tmp_path / "c" / "feature_A.safetensors")
    assert read_recipe(part.metadata)["phases"] == {"A": 4} and part.metadata["ss_network_dim"] == "2"


def test_a_v_prediction_host_is_recorded_as_kohya_does(tmp_path):
    from lib_copylora.core.formats import read_lora
    from lib_copylora.train.host import Prediction
    from lib_copylora.train.routes import train_single
    from toy_host import ToyHost

    data = ToySource(torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(1)), 2)
    result = train_single(ToyHost(prediction=Prediction.V), _quick("single", tmp_path), data)
    assert read_lora(result.path).metadata["ss_v_parameterization"] == "True"
