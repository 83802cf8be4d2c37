"""AUTOMATIC1111 v1.10's options catalogue: every option of `modules/shared_options.py` and of the built-in
extensions (Lora, hypertile, canvas-zoom-and-pan, extra-options-section, SwinIR, LDSR) and processing
scripts (comments), with A1111's default, as data.

`server/options.py` serves each one: the options this server applies have their own checks there; every
other name here is accepted with a check of its type (the type of A1111's default) and listed under the
reason it changes nothing here. `docs/compatibility.md` lists the same groups.

A group is `(reason, {name: A1111 default})`; the reasons are shown to users (`help` of the option)."""
from __future__ import annotations

from typing import Any

# Options this server applies (their checks and help live in server/options.py), with A1111's defaults.
APPLIED: dict[str, Any] = {
    "samples_save": True, "samples_format": "png", "jpeg_quality": 80, "enable_pnginfo": True,
    "save_incomplete_images": False,
    "outdir_samples": "", "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_img2img_samples": "outputs/img2img-images",
    "ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8, "upscaler_for_img2img": None,
    "face_restoration": False, "face_restoration_model": "CodeFormer", "code_former_weight": 0.5,
    "sd_model_checkpoint": None, "CLIP_stop_at_last_layers": 1, "hires_fix_refiner_pass": "second pass",
    "sdxl_crop_top": 0, "sdxl_crop_left": 0, "sdxl_refiner_low_aesthetic_score": 2.5,
    "sdxl_refiner_high_aesthetic_score": 6.0, "sd_vae": "Automatic",
    "sd_vae_encode_method": "Full", "sd_vae_decode_method": "Full",
    "inpainting_mask_weight": 1.0, "initial_noise_multiplier": 1.0, "img2img_fix_steps": False,
    "img2img_background_color": "#ffffff", "overlay_inpaint": True,
    "add_model_name_to_info": True, "add_model_hash_to_info": True, "add_vae_name_to_info": True,
    "add_vae_hash_to_info": True, "textual_inversion_add_hashes_to_infotext": True,
    "live_previews_enable": True, "show_progress_every_n_steps": 10, "show_progress_type": "Approx NN",
    "eta_ddim": 0.0, "eta_ancestral": 1.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0,
    "refiner_switch_by_sample_steps": False,
    "sd_checkpoint_hash": "",
    # model loading, VAE, LoRA and memory
    "sd_vae_overrides_per_model_preferences": True, "fp8_storage": "Disable", "cache_fp16_weight": False,
    "auto_vae_precision": True, "auto_vae_precision_bfloat16": False, "sd_checkpoints_limit": 1,
    "sd_checkpoints_keep_in_cpu": True, "face_restoration_unload": False,
    # built-in extensions and processing scripts
    "lora_add_hashes_to_infotext": True, "lora_bundled_ti_to_infotext": True, "lora_functional": False,
    "lora_in_memory_limit": 0,
    "ldsr_steps": 100, "ldsr_cached": False, "enable_prompt_comments": True, "tiling": False,
    "use_old_hires_fix_width_height": False, "img2img_extra_noise": 0.0,
    "save_images_before_highres_fix": False, "save_txt": False, "save_to_dirs": True, "webp_lossless": False,
    "DAT_tile": 192, "DAT_tile_overlap": 8, "SWIN_tile": 192, "SWIN_tile_overlap": 8,
    # issue 20 (seeds and sampling) and the speed issue (Hypertile, token merging)
    "randn_source": "GPU", "eta_noise_seed_delta": 0, "always_discard_next_to_last_sigma": False,
    "emphasis": "Original", "s_min_uncond": 0.0, "s_min_uncond_all": False, "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False, "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0, "token_merging_ratio": 0.0,
    "token_merging_ratio_img2img": 0.0, "token_merging_ratio_hr": 0.0, "hypertile_enable_unet": False,
    "hypertile_enable_unet_secondpass": False, "hypertile_max_depth_unet": 3, "hypertile_max_tile_unet": 256,
    "hypertile_swap_size_unet": 3, "hypertile_enable_vae": False, "hypertile_max_depth_vae": 3,
    "hypertile_max_tile_vae": 128, "hypertile_swap_size_vae": 3, "beta_dist_alpha": 0.6,
    "beta_dist_beta": 0.6, "sd_noise_schedule": "Default", "sgm_noise_multiplier": False,
    "skip_early_cond": 0.0, "use_downcasted_alpha_bar": False, "use_old_karras_scheduler_sigmas": False,
    "use_old_scheduling": False,
    "img2img_color_correction": False, "return_grid": True, "grid_only_if_multiple": True, "n_rows": -1,
    "grid_prevent_empty_spots": False, "grid_background_color": "#ffffff", "grid_save": True,
    "grid_format": "png", "grid_save_to_dirs": True, "outdir_grids": "",
    "outdir_txt2img_grids": "outputs/txt2img-grids", "outdir_img2img_grids": "outputs/img2img-grids",
    "hires_fix_use_firstpass_conds": False, "uni_pc_variant": "bh1", "uni_pc_skip_type": "time_uniform",
    "uni_pc_order": 3, "uni_pc_lower_order_final": True, "save_images_before_color_correction": False,
    # saved files' names and folders (server/filenames.py, server/saving.py)
    "samples_filename_pattern": "", "save_images_add_number": True, "save_images_replace_action": "Replace",
    "directories_filename_pattern": "[date]", "directories_max_prompt_words": 8, "grid_extended_filename": False,
    "export_for_4chan": True, "img_downscale_threshold": 4.0, "target_side_length": 4000,
    "save_images_before_face_restoration": False, "save_init_img": False,
    "outdir_init_images": "outputs/init-images",
    "upscaling_max_images_in_cache": 5, "auto_backcompat": True,
    "add_version_to_infotext": True,
    # image inputs given as http(s) URLs (server/imagefetch.py)
    "api_enable_requests": True, "api_forbid_local_requests": True, "api_useragent": "",
    # inpainting's mask outputs (pipeline/jobs/img2img/run.py, server/deps.py)
    "return_mask": False, "return_mask_composite": False, "save_mask": False, "save_mask_composite": False,
    # sampling, text encoding and attention numerics
    "enable_quantization": False, "comma_padding_backtrack": 20, "sdxl_clip_l_skip": False,
    "no_dpmpp_sde_batch_determinism": False, "live_preview_content": "Prompt",
    "use_old_emphasis_implementation": False, "upcast_attn": False,
    # the LoRA added to every prompt (pipeline/models/networks/activation.py default_lora_tag)
    "sd_lora": "None", "extra_networks_default_multiplier": 1.0,
    # the live previews of POST /internal/progress (server/routes/internal.py) and of batches (preview.py)
    "live_previews_image_format": "png", "show_progress_grid": True,
    # the model listings' walk (upscalers/folders.py model_walk)
    "list_hidden_files": True,
    # extras operations (upscalers/extras.py operation_order)
    "postprocessing_operation_order": [], "postprocessing_disable_in_extras": [],
}

# Options without effect through A1111's own API either: they steer its browser UI, console, training tab
# or the files of its UI buttons. Accepted and stored, as A1111 stores them.
NO_EFFECT_IN_A1111_API: list[tuple[str, dict[str, Any]]] = [
    ("A1111 web UI only (browser layout, hotkeys, galleries, themes); no effect through the API", {
        "save_selected_only": True, "save_write_log_csv": True, "outdir_save": "log/images",
        "use_save_to_dirs_for_ui": False, "notification_audio": True, "notification_volume": 100,
        "auto_launch_browser": "Local", "show_gradio_deprecation_warnings": True,
        "img2img_editor_height": 720, "img2img_sketch_default_brush_color": "#ffffff",
        "img2img_inpaint_mask_brush_color": "#ffffff",
        "img2img_inpaint_sketch_default_brush_color": "#ffffff",
        "img2img_batch_show_results_limit": 32, "grid_zip_filename_pattern": "",
        "extra_networks_show_hidden_directories": True, "extra_networks_dir_button_function": False,
        "extra_networks_hidden_models": "When searched",
        "extra_networks_card_width": 0, "extra_networks_card_height": 0,
        "extra_networks_card_text_scale": 1.0,
        "extra_networks_card_show_desc": True, "extra_networks_card_description_is_html": False,
        "extra_networks_card_order_field": "Path", "extra_networks_card_order": "Ascending",
        "extra_networks_tree_view_style": "Dirs", "extra_networks_tree_view_default_enabled": True,
        "extra_networks_tree_view_default_width": 180, "extra_networks_add_text_separator": " ",
        "ui_extra_networks_tab_reorder": "",
        "keyedit_precision_attention": 0.1, "keyedit_precision_extra": 0.05,
        "keyedit_delimiters": ".,\\/!?%^*;:{}=`~() ",
        "keyedit_delimiters_whitespace": ["Tab", "Carriage Return", "Line Feed"], "keyedit_move": True,
        "disable_token_counters": False, "include_styles_into_token_counters": True,
        "do_not_show_images": False, "js_modal_lightbox": True,
        "js_modal_lightbox_initially_zoomed": True, "js_modal_lightbox_gamepad": False,
        "js_modal_lightbox_gamepad_repeat": 250, "sd_webui_modal_lightbox_icon_opacity": 1,
        "sd_webui_modal_lightbox_toolbar_opacity": 0.9, "gallery_height": "",
        "open_dir_button_choice": "Subdirectory", "compact_prompt_box": False, "samplers_in_dropdown": True,
        "dimensions_and_batch_together": True, "sd_checkpoint_dropdown_use_short": False,
        "hires_fix_show_sampler": False, "hires_fix_show_prompts": False, "txt2img_settings_accordion": False,
        "img2img_settings_accordion": False, "interrupt_after_current": True, "localization": "None",
        "quicksettings_list": ["sd_model_checkpoint"], "ui_tab_order": [], "hidden_tabs": [],
        "ui_reorder_list": [], "gradio_theme": "Default", "gradio_themes_cache": True,
        "show_progress_in_title": True, "send_seed": True, "send_size": True,
        "enable_reloading_ui_scripts": False, "disable_weights_auto_swap": True, "infotext_skip_pasting": [],
        "infotext_styles": "Apply if any", "show_progressbar": True,
        "live_preview_allow_lowvram_full": False,
        "live_preview_refresh_period": 1000,
        "live_preview_fast_interrupt": False, "js_live_preview_in_modal_lightbox": False,
        "prevent_screen_sleep_during_generation": True, "hide_samplers": [],
        "set_scale_by_when_changing_upscaler": False,
        "lora_preferred_name": "Alias from file", "lora_show_all": False,
        "lora_hide_unknown_for_versions": [],
        "lora_not_found_gradio_warning": False,
        "extra_options_txt2img": [], "extra_options_img2img": [], "extra_options_cols": 1,
        "extra_options_accordion": False,
        "canvas_hotkey_zoom": "Alt", "canvas_hotkey_adjust": "Ctrl", "canvas_hotkey_shrink_brush": "Q",
        "canvas_hotkey_grow_brush": "W", "canvas_hotkey_move": "F", "canvas_hotkey_fullscreen": "S",
        "canvas_hotkey_reset": "R", "canvas_hotkey_overlap": "O", "canvas_show_tooltip": True,
        "canvas_auto_expand": True, "canvas_blur_prompt": False, "canvas_disabled_functions": ["Overlap"],
    }),
    ("A1111 console and process settings (printing, profiling, start-up); no effect on results", {
        "enable_console_prompts": False, "show_warnings": False, "memmon_poll_rate": 8,
        "samples_log_stdout": False, "multiple_tqdm": True, "enable_upscale_progressbar": True,
        "print_hypernet_extra": False, "disable_mmap_load_safetensors": False,
        "hide_ldm_prints": True, "dump_stacks_on_signal": False, "profiling_enable": False,
        "profiling_activities": ["CPU"], "profiling_record_shapes": True, "profiling_profile_memory": True,
        "profiling_with_stack": True, "profiling_filename": "trace.json", "temp_dir": "",
        "clean_temp_dir_at_start": False, "textual_inversion_print_at_load": False,
        "lora_not_found_warning_console": False, "disabled_extensions": [], "disable_all_extensions": "none",
        "restore_config_state_file": "",
    }),
    ("A1111 writes `User` only from its web UI's login (modules/txt2img.py, img2img.py: p.user = "
     "request.username); its API never sets p.user (not a request field: init=False), --api-auth included", {
        "add_user_name_to_info": False,
    }),
    ("A1111's API extras never save their results (extras_single_image_api / extras_batch_images_api call "
     "run_extras with save_output=False); these name, place and caption saved extras files only "
     "(modules/postprocessing.py, scripts/postprocessing_upscale.py)", {
        "outdir_extras_samples": "outputs/extras-images", "use_original_name_batch": True,
        "use_upscaler_name_as_suffix": False, "postprocessing_existing_caption_action": "Ignore",
    }),
    ("A1111's UNet replacements come only from extensions (TensorRT's list_unets callback); without one, "
     "A1111 1.10 runs the checkpoint's own UNet for every value (modules/sd_unet.py get_unet_option: "
     "'Automatic', 'None' and unknown names alike), and no such extension runs here", {
        "sd_unet": "Automatic",
    }),
    ("hypernetworks, which this server does not load (/sdapi/v1/hypernetworks lists none): A1111 adds "
     "`<hypernet:NAME:extra_networks_default_multiplier>` to the prompt only when sd_hypernetwork names one "
     "of the hypernetwork files it found (modules/extra_networks_hypernet.py); a prompt's `<hypernet:...>` "
     "tag is removed from the text encoded and otherwise ignored here", {
        "sd_hypernetwork": "None",
    }),
    ("A1111's training tab; this server does not train", {
        "unload_models_when_training": False, "pin_memory": False, "save_optimizer_state": False,
        "save_training_settings_to_txt": True, "dataset_filename_word_regex": "",
        "dataset_filename_join_string": " ",
        "training_image_repeats_per_epoch": 1, "training_write_csv_every": 500,
        "training_xattention_optimizations": False, "training_enable_tensorboard": False,
        "training_tensorboard_save_images": False, "training_tensorboard_flush_every": 120,
    }),
    ("read by no code of A1111 1.10: since 1.6 every image's noise, the samplers' included, comes "
     "from its own seeded generator (modules/rng.py ImageRNG): a batch gives its single runs' images", {
        "enable_batch_seeds": True,
    }),
    ("read by no code of A1111 1.10: since 1.6 DDIM runs A1111's own fixed timestep grid "
     "(modules/sd_samplers_timesteps.py), which has no quad discretization", {
        "ddim_discretize": "uniform",
    }),
    ("no option of A1111 1.10: no code of it defines or reads the name (modules/shared_options.py has "
     "only upcast_attn); its GET /options lists every key its config.json holds (modules/api/api.py "
     "get_config), so configs written by other builds bring it along", {
        "auto_upcast_attn": True,
    }),
]

# Options with an effect in A1111 that this server does not reproduce: speed and memory strategy (this
# server's model manager and launch flags decide those, with the same images), and features not served.
NOT_APPLIED: list[tuple[str, dict[str, Any]]] = [
    ("speed and memory strategy only (A1111's RAM caches of checkpoint and VAE weights, its attention "
     "implementation, cond cache, cond/uncond batching, SwinIR compilation): this server's model manager "
     "and launch flags (--sdpa-backend, --compile) decide; images are the same up to rounding", {
        "sd_checkpoint_cache": 0,
        "sd_vae_checkpoint_cache": 0,
        "cross_attention_optimization": "Automatic",
        "persistent_cond_cache": True, "batch_cond_uncond": True,
        "SWIN_torch_compile": False,
    }),
    ("concerns models this server does not run: SD3's T5 text encoder (SD 1.x, 2.x and SDXL only here)", {
        "sd3_enable_t5": False,
    }),
    ("A1111's image captioning (POST /sdapi/v1/interrogate: modules/interrogate.py for CLIP, "
     "modules/deepbooru.py); that route answers 501 here (its models are not shipped)", {
        "interrogate_keep_models_in_memory": False, "interrogate_return_ranks": False,
        "interrogate_clip_num_beams": 1, "interrogate_clip_min_length": 24, "interrogate_clip_max_length": 48,
        "interrogate_clip_dict_limit": 1500, "interrogate_clip_skip_categories": [],
        "interrogate_deepbooru_score_threshold": 0.5, "deepbooru_sort_alpha": True,
        "deepbooru_use_spaces": True, "deepbooru_escape": True, "deepbooru_filter_tags": "",
    }),
    ("the annotated grids of A1111's X/Y/Z plot and Prompt matrix scripts (modules/images.py "
     "draw_grid_annotations; scripts/xyz_grid.py's size check); this server does not serve those scripts "
     "(their script_name is a 400)", {
        "font": "", "grid_text_active_color": "#000000", "grid_text_inactive_color": "#999999",
        "img_max_size_mp": 200,
    }),
    ("A1111 adds the postprocessing operations named here to txt2img and img2img as always-on scripts "
     "(modules/scripts_auto_postprocessing.py, read at start-up; they act only when a request's "
     "alwayson_scripts passes them arguments); this server serves no such scripts", {
        "postprocessing_enable_in_main_ui": [],
    }),
    ("A1111's list of its own downloadable upscaler models; here the upscalers are the model files found", {
        "realesrgan_enabled_models": ["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"],
        "dat_enabled_models": ["DAT x2", "DAT x3", "DAT x4"],
    }),
]


def unapplied_groups() -> list[tuple[str, dict[str, Any]]]:
    """Every group of accepted-but-unapplied options, with its reason."""
    return [*NO_EFFECT_IN_A1111_API, *NOT_APPLIED]


def a1111_defaults() -> dict[str, Any]:
    """Every A1111 v1.10 option name with A1111's default (what a fresh A1111 install's GET /options holds,
    checkpoint aside)."""
    out = dict(APPLIED)
    for _, group in unapplied_groups():
        out.update(group)
    return out
