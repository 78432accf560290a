"""The kohya `train_network.py` flags CopyLoRA accepts with a note (they only concern speed, memory or logging) or
refuses (they would change the trained file in a way CopyLoRA does not do), each with its one line of text.
kohya_flags.py reads them; docs/cli.md ('kohya command lines') lists them for people."""

from __future__ import annotations

from typing import NamedTuple

FLAG, VALUE, VALUES = "flag", "value", "values"  # kohya's store_true, one value, nargs="*"


class Kohya(NamedTuple):
    arity: str
    text: str  # (c): the note; (d): what the flag would have changed and what to use instead
    neutral: tuple = ()  # values that change nothing (kohya's own defaults): accepted silently


# (c) speed, memory or logging only: our run is the same without them
NOTED = {
    "cache_latents_to_disk": Kohya(FLAG, "latents are cached in memory (the VAE's mean, once per image)"),
    "vae_batch_size": Kohya(VALUE, "latents are encoded one image at a time"),
    "skip_cache_check": Kohya(FLAG, "nothing is cached on disk to check"),
    "cache_info": Kohya(FLAG, "every image is scanned once before the model loads"),
    "xformers": Kohya(FLAG, "attention runs the host's fastest kernel (--host_attention, on by default)"),
    "sdpa": Kohya(FLAG, "attention runs PyTorch SDPA (--host_attention, on by default)"),
    "mem_eff_attn": Kohya(FLAG, "attention runs PyTorch SDPA (--host_attention, on by default)"),
    "max_data_loader_n_workers": Kohya(VALUE, "images are read in the main process; latents are cached"),
    "persistent_data_loader_workers": Kohya(FLAG, "images are read in the main process; latents are cached"),
    "lowram": Kohya(FLAG, "models load as --model_dtype says"),
    "highvram": Kohya(FLAG, "models load as --model_dtype says"),
    "tokenizer_cache_dir": Kohya(VALUE, "the tokenizer is read from the model folder; nothing is downloaded"),
    "logging_dir": Kohya(VALUE, "progress (step, loss, learning rate) is printed to stdout"),
    "log_with": Kohya(VALUE, "progress (step, loss, learning rate) is printed to stdout"),
    "log_prefix": Kohya(VALUE, "progress is printed to stdout"),
    "log_tracker_name": Kohya(VALUE, "progress is printed to stdout"),
    "log_tracker_config": Kohya(VALUE, "progress is printed to stdout"),
    "wandb_run_name": Kohya(VALUE, "progress is printed to stdout; nothing is sent to wandb"),
    "wandb_api_key": Kohya(VALUE, "nothing is sent to wandb (the key is not used)"),
    "log_config": Kohya(FLAG, "the saved file's metadata records the settings"),
    "console_log_level": Kohya(VALUE, "progress is printed to stdout"),
    "console_log_file": Kohya(VALUE, "progress is printed to stdout; redirect it to keep it"),
    "console_log_simple": Kohya(FLAG, "progress is printed to stdout"),
    "save_last_n_epochs": Kohya(VALUE, "every save is kept; delete older ones yourself"),
    "save_last_n_epochs_state": Kohya(VALUE, "every save is kept; delete older ones yourself"),
    "save_last_n_steps": Kohya(VALUE, "every save is kept; delete older ones yourself"),
    "save_last_n_steps_state": Kohya(VALUE, "every save is kept; delete older ones yourself"),
    "ddp_timeout": Kohya(VALUE, "data-parallel runs use torch's defaults"),
    "ddp_gradient_as_bucket_view": Kohya(FLAG, "data-parallel runs average gradients themselves"),
    "ddp_static_graph": Kohya(FLAG, "data-parallel runs average gradients themselves"),
    "deepspeed": Kohya(FLAG, "training is plain data-parallel, without DeepSpeed (more memory per GPU)"),
    "zero_stage": Kohya(VALUE, "no DeepSpeed"), "offload_optimizer_device": Kohya(VALUE, "no DeepSpeed"),
    "offload_optimizer_nvme_path": Kohya(VALUE, "no DeepSpeed"), "offload_param_device": Kohya(VALUE, "no DeepSpeed"),
    "offload_param_nvme_path": Kohya(VALUE, "no DeepSpeed"), "zero3_init_flag": Kohya(FLAG, "no DeepSpeed"),
    "zero3_save_16bit_model": Kohya(FLAG, "no DeepSpeed"),
    "cpu_offload_checkpointing": Kohya(FLAG, "checkpointed activations stay on the device"),
    "fused_backward_pass": Kohya(FLAG, "the optimiser steps after the whole backward pass"),
    "dynamo_backend": Kohya(VALUE, "torch.compile uses inductor (see --compile)", ("inductor",)),
    "sample_sampler": Kohya(VALUE, "previews render with DDIM (they are not part of the file)", ("ddim",)),
    "sample_at_first": Kohya(FLAG, "previews render every --sample_every_n_steps and at the end, not before"),
    "lr_scheduler_power": Kohya(VALUE, "only kohya's polynomial schedule reads it, which CopyLoRA does not have"),
    "lr_decay_steps": Kohya(VALUE, "only kohya's warmup_stable_decay schedule reads it", ("0",)),
    "lr_scheduler_timescale": Kohya(VALUE, "only kohya's inverse_sqrt schedule reads it"),
    "lr_scheduler_min_lr_ratio": Kohya(VALUE, "only kohya's cosine_with_min_lr schedule reads it"),
    "huber_schedule": Kohya(VALUE, "only huber losses read it (the loss is L2)"),
    "huber_c": Kohya(VALUE, "only huber losses read it (the loss is L2)"),
    "huber_scale": Kohya(VALUE, "only huber losses read it (the loss is L2)"),
    "multires_noise_discount": Kohya(VALUE, "only multires noise reads it, which CopyLoRA does not add"),
    "dataset_repeats": Kohya(VALUE, "only --in_json datasets read it; folder repeats come from N_name", ("1",)),
    "validation_seed": Kohya(VALUE, "no validation set is split off"),
    "validate_every_n_steps": Kohya(VALUE, "no validation set is split off"),
    "validate_every_n_epochs": Kohya(VALUE, "no validation set is split off"),
    "max_validation_steps": Kohya(VALUE, "no validation set is split off"),
}

# (d) would change the trained file (or its metadata) in a way CopyLoRA does not do
REFUSED = {
    "network_weights": Kohya(VALUE, "start from a LoRA file's weights; CopyLoRA starts fresh (--resume continues "
                                    "a run of its own)"),
    "dim_from_weights": Kohya(FLAG, "take the rank from --network_weights; give --network_dim"),
    "base_weights": Kohya(VALUES, "merge LoRAs into the model before training; for the copy machine that is "
                                  "--route copier --data-a A --data-b B"),
    "base_weights_multiplier": Kohya(VALUES, "scale --base_weights; use --route copier"),
    "network_dropout": Kohya(VALUE, "drop LoRA neurons during training; train without it", ("0", "0.0")),
    "scale_weight_norms": Kohya(VALUE, "rescale the LoRA's weights after each step (max-norm); train without it"),
    "network_train_text_encoder_only": Kohya(FLAG, "leave the UNet untrained; CopyLoRA always trains the UNet"),
    "no_metadata": Kohya(FLAG, "save without metadata; CopyLoRA always writes ss_* metadata"),
    "save_model_as": Kohya(VALUE, "save in another format; CopyLoRA writes .safetensors", ("safetensors",)),
    "save_n_epoch_ratio": Kohya(VALUE, "save at a share of the epochs; use --save_every_n_epochs"),
    "huggingface_repo_id": Kohya(VALUE, "upload the result; CopyLoRA uploads nothing"),
    "huggingface_repo_type": Kohya(VALUE, "upload the result; CopyLoRA uploads nothing"),
    "huggingface_path_in_repo": Kohya(VALUE, "upload the result; CopyLoRA uploads nothing"),
    "huggingface_token": Kohya(VALUE, "upload the result; CopyLoRA uploads nothing"),
    "huggingface_repo_visibility": Kohya(VALUE, "upload the result; CopyLoRA uploads nothing"),
    "save_state_to_huggingface": Kohya(FLAG, "upload the state; CopyLoRA uploads nothing"),
    "resume_from_huggingface": Kohya(FLAG, "download a state; CopyLoRA downloads nothing"),
    "async_upload": Kohya(FLAG, "upload the result; CopyLoRA uploads nothing"),
    "full_fp16": Kohya(FLAG, "keep the LoRA's weights and gradients in fp16; CopyLoRA keeps them in fp32 under "
                             "--mixed_precision fp16"),
    "full_bf16": Kohya(FLAG, "keep the LoRA's weights and gradients in bf16; CopyLoRA keeps them in fp32 under "
                             "--mixed_precision bf16"),
    "fp8_base": Kohya(FLAG, "hold the base model in fp8; use --model_dtype fp16 or bf16"),
    "fp8_base_unet": Kohya(FLAG, "hold the UNet in fp8; use --model_dtype fp16 or bf16"),
    "fp16_master_weights_and_gradients": Kohya(FLAG, "keep master weights in fp16; CopyLoRA keeps fp32"),
    "no_half_vae": Kohya(FLAG, "encode latents with an fp32 VAE while the model is half; use --model_dtype fp32"),
    "vae": Kohya(VALUE, "encode with another VAE; put that VAE into the model folder"),
    "max_token_length": Kohya(VALUE, "encode captions up to 150 or 225 tokens; CopyLoRA encodes 75"),
    "v_pred_like_loss": Kohya(VALUE, "add a v-prediction-like loss term; train without it"),
    "scale_v_pred_loss_like_noise_pred": Kohya(FLAG, "rescale the v-prediction loss; train without it"),
    "debiased_estimation_loss": Kohya(FLAG, "reweight the loss per timestep; --min_snr_gamma is what CopyLoRA has"),
    "weighted_captions": Kohya(FLAG, "read (token:1.3) weights in captions; write plain captions"),
    "noise_offset_random_strength": Kohya(FLAG, "draw the noise offset's strength at random; --noise_offset is "
                                                "fixed"),
    "multires_noise_iterations": Kohya(VALUE, "add multires noise; --noise_offset is what CopyLoRA has"),
    "ip_noise_gamma": Kohya(VALUE, "perturb the input noise; train without it"),
    "ip_noise_gamma_random_strength": Kohya(FLAG, "perturb the input noise; train without it"),
    "adaptive_noise_scale": Kohya(VALUE, "scale the noise offset by the latents; --noise_offset is fixed"),
    "zero_terminal_snr": Kohya(FLAG, "change the noise schedule's betas; train without it"),
    "min_timestep": Kohya(VALUE, "train on fewer timesteps; CopyLoRA samples all 1000", ("0",)),
    "max_timestep": Kohya(VALUE, "train on fewer timesteps; CopyLoRA samples all 1000", ("1000",)),
    "loss_type": Kohya(VALUE, "use another loss; CopyLoRA's is L2", ("l2",)),
    "masked_loss": Kohya(FLAG, "mask the loss; train without masks"),
    "conditioning_data_dir": Kohya(VALUE, "read loss masks; train without masks"),
    "alpha_mask": Kohya(FLAG, "mask the loss by the alpha channel; train without masks"),
    "color_aug": Kohya(FLAG, "jitter the images' colours; train without it (--flip_aug is what CopyLoRA has)"),
    "random_crop": Kohya(FLAG, "crop at random; CopyLoRA crops centrally"),
    "face_crop_aug_range": Kohya(VALUE, "crop around faces; train without it"),
    "resize_interpolation": Kohya(VALUE, "resize with another filter; train without it"),
    "caption_separator": Kohya(VALUE, "split captions on another separator; CopyLoRA splits on ','", (",",)),
    "keep_tokens_separator": Kohya(VALUE, "keep caption tokens by a separator; use --keep_tokens N", ("",)),
    "secondary_separator": Kohya(VALUE, "join caption tokens by a second separator; write plain captions"),
    "enable_wildcard": Kohya(FLAG, "expand {a|b} wildcards in captions; write plain captions"),
    "caption_prefix": Kohya(VALUE, "add a prefix to every caption; put it into the caption files"),
    "caption_suffix": Kohya(VALUE, "add a suffix to every caption; put it into the caption files"),
    "caption_tag_dropout_rate": Kohya(VALUE, "drop single caption tags; --caption_dropout_rate drops whole "
                                             "captions", ("0", "0.0")),
    "caption_dropout_every_n_epochs": Kohya(VALUE, "drop every caption every n epochs; use "
                                                   "--caption_dropout_rate", ("0",)),
    "token_warmup_min": Kohya(VALUE, "start with fewer caption tags; train without it", ("1",)),
    "token_warmup_step": Kohya(VALUE, "start with fewer caption tags; train without it", ("0", "0.0")),
    "debug_dataset": Kohya(FLAG, "show the images instead of training; `inspect` a set by training one step"),
    "dataset_class": Kohya(VALUE, "read images through your own class; give an image folder"),
    "dataset_config": Kohya(VALUE, "read the datasets from a .toml; give the folder with --data (or --data-a and "
                                   "--data-b) and its settings as flags"),
    "in_json": Kohya(VALUE, "read captions and sizes from a metadata .json; give an image folder with captions "
                            "beside the images"),
    "config_file": Kohya(VALUE, "read settings from a .toml; give them as flags"),
    "output_config": Kohya(FLAG, "write the settings to a .toml and stop; the saved file's metadata records them"),
    "lr_scheduler_type": Kohya(VALUE, "use a custom schedule; pick --lr_scheduler"),
    "lr_scheduler_args": Kohya(VALUES, "pass arguments to a custom schedule; pick --lr_scheduler"),
    "validation_split": Kohya(VALUE, "hold images back for validation (not trained on); train on them all",
                              ("0", "0.0")),
    "initial_epoch": Kohya(VALUE, "start the schedule part-way; --resume continues a run"),
    "initial_step": Kohya(VALUE, "start the schedule part-way; --resume continues a run"),
    "skip_until_initial_step": Kohya(FLAG, "skip steps; --resume continues a run"),
    "metadata_title": Kohya(VALUE, "write modelspec metadata; CopyLoRA writes ss_* metadata only"),
    "metadata_author": Kohya(VALUE, "write modelspec metadata; CopyLoRA writes ss_* metadata only"),
    "metadata_description": Kohya(VALUE, "write modelspec metadata; CopyLoRA writes ss_* metadata only"),
    "metadata_license": Kohya(VALUE, "write modelspec metadata; CopyLoRA writes ss_* metadata only"),
    "metadata_tags": Kohya(VALUE, "write modelspec metadata; CopyLoRA writes ss_* metadata only"),
    "metadata_usage_hint": Kohya(VALUE, "write modelspec metadata; CopyLoRA writes ss_* metadata only"),
    "metadata_thumbnail": Kohya(VALUE, "write modelspec metadata; CopyLoRA writes ss_* metadata only"),
    "metadata_merged_from": Kohya(VALUE, "write modelspec metadata; CopyLoRA writes ss_* metadata only"),
    "metadata_trigger_phrase": Kohya(VALUE, "write modelspec metadata; CopyLoRA writes ss_* metadata only"),
    "metadata_preprocessor": Kohya(VALUE, "write modelspec metadata; CopyLoRA writes ss_* metadata only"),
    "metadata_is_negative_embedding": Kohya(VALUE, "write modelspec metadata; CopyLoRA writes ss_* metadata only"),
}
