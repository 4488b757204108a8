import json

import jax
import pytest

from svlm_jax import ModelConfig, count_params, param_shapes


@pytest.mark.parametrize("name,expected", [("7b", 8_292_166_656), ("3b", 3_754_622_976), ("tiny", 244_640)])
def test_preset_param_counts(name, expected):
    # eval_shape only: nothing is allocated, so the 7B count costs no memory.
    assert count_params(param_shapes(ModelConfig.preset(name))) == expected


def test_preset_shapes_7b():
    shapes = param_shapes(ModelConfig.qwen25vl_7b())
    assert shapes["visual"]["patch_embed"]["kernel"].shape == (1176, 1280)
    assert shapes["visual"]["blocks_31"]["attn"]["qkv"]["kernel"].shape == (1280, 3840)
    assert shapes["visual"]["merger"]["mlp_2"]["kernel"].shape == (5120, 3584)
    assert shapes["text"]["layers_27"]["self_attn"]["k_proj"]["kernel"].shape == (3584, 512)
    assert shapes["text"]["embed_tokens"]["embedding"].shape == (152064, 3584)
    assert shapes["lm_head"]["kernel"].shape == (3584, 152064)
    assert "lm_head" not in param_shapes(ModelConfig.qwen25vl_3b())
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(shapes))


def _hub_7b_config():
    # The flat layout of the hub's config.json for Qwen2.5-VL-7B-Instruct.
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "tie_word_embeddings": False,
        "max_position_embeddings": 128000, "bos_token_id": 151643, "eos_token_id": 151645,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
        "image_token_id": 151655, "video_token_id": 151656,
        "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                          "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                          "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                          "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                          "temporal_patch_size": 2},
    }


def test_from_hf_flat_layout(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_hub_7b_config()))
    assert ModelConfig.from_hf(tmp_path) == ModelConfig.qwen25vl_7b()


def test_from_hf_nested_layout():
    flat = _hub_7b_config()
    text_keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings"]
    nested = {k: v for k, v in flat.items() if k not in text_keys + ["rope_scaling"]}
    nested["text_config"] = {k: flat[k] for k in text_keys}
    nested["text_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6,
                                                "mrope_section": [16, 24, 24]}
    assert ModelConfig.from_hf(nested) == ModelConfig.qwen25vl_7b()


def test_json_round_trip_and_hf_round_trip():
    for cfg in (ModelConfig.tiny(), ModelConfig.qwen25vl_3b(), ModelConfig.tiny(dtype="bfloat16")):
        assert ModelConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
        assert ModelConfig.from_hf(cfg.to_hf()) == cfg.replace(dtype="float32")


def test_bad_config_names_the_problem():
    from svlm_jax.config import TextConfig
    with pytest.raises(ValueError, match="mrope_section"):
        ModelConfig(text=TextConfig(mrope_section=(16, 24, 23)))
    with pytest.raises(ValueError, match="Unknown preset"):
        ModelConfig.preset("13b")
