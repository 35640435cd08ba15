"""Every named config builds, saves in the official layout and loads back strictly, with the official sizes."""
import pytest
import torch

from samed2.model import CONFIG_NAMES, build_model
from samed2.weights import load_weights

# (parameters in millions to one decimal, state-dict keys), from Meta's and SAMed-2's releases
OFFICIAL = {
    "sam2.1-hiera-tiny": (38.9, 471), "sam2.1-hiera-small": (46.0, 519),
    "sam2.1-hiera-base_plus": (80.8, 615), "sam2.1-hiera-large": (224.4, 903),
    "medsam2": (38.9, 471), "sam2-hiera-small": (46.0, 516), "samed2": (None, 740),
}


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_checkpoint_round_trip_of_named_config(name, tmp_path):
    model = build_model(name)
    path = tmp_path / f"{name}.pt"
    torch.save({"model": model.state_dict()}, path)
    reloaded = load_weights(build_model(name), path)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_checkpoint_sizes_match_official_figures(name):
    params, keys = OFFICIAL[name]
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = build_model(name)
    assert len(model.state_dict()) == keys
    if params is not None:
        millions = sum(p.numel() for p in model.parameters()) / 1e6
        assert int(millions * 10) / 10 == params  # the official figures are truncated: 38.96M -> 38.9M


def test_checkpoint_samed2_is_sam2_small_plus_adapters_and_fusion():
    with torch.device("meta"):
        samed2, small = build_model("samed2").state_dict(), build_model("sam2-hiera-small").state_dict()
    extra = set(samed2) - set(small)
    assert set(small) <= set(samed2)
    assert {k.split(".")[4] for k in extra} == {"adapter", "fancy_fusion"}
    assert len([k for k in extra if ".adapter." in k]) == 16 * 8


def test_cached_dense_position_encoding_follows_loaded_weights():
    """The prompt encoder's grid encoding is cached per click; loading other weights must refresh it."""
    from suite import golden_tiny_config

    model = build_model(golden_tiny_config())
    encoder = model.sam_prompt_encoder
    before = encoder.dense_pe().clone()
    state = model.state_dict()
    state["sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn_like(
        encoder.pe_layer.positional_encoding_gaussian_matrix)
    model.load_state_dict(state)
    fresh = encoder.pe_layer.grid(encoder.embedding_size, encoder.embedding_size).unsqueeze(0)
    assert not torch.equal(encoder.dense_pe(), before)
    assert torch.equal(encoder.dense_pe(), fresh)


def test_cached_dense_position_encoding_works_for_a_model_built_in_inference_mode():
    from suite import golden_tiny_config

    with torch.inference_mode():
        encoder = build_model(golden_tiny_config()).sam_prompt_encoder
        first = encoder.dense_pe()
        assert encoder.dense_pe() is first  # kept, not recomputed


@pytest.mark.parametrize("channels, side", [(256, 16), (64, 32)])
def test_upsample2x_equals_the_transposed_convolution(channels, side):
    from samed2.model.building_blocks import upsample2x

    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose2d(channels, channels // 4, kernel_size=2, stride=2)
    x = torch.randn(2, channels, side, side)
    skip = torch.randn(2, channels // 4, 2 * side, 2 * side).contiguous(memory_format=torch.channels_last)
    for extra in (None, skip):
        channels_last = upsample2x(conv, x.permute(0, 2, 3, 1), extra).permute(0, 3, 1, 2)
        expected = conv(x) if extra is None else conv(x) + skip
        torch.testing.assert_close(channels_last, expected, rtol=1e-5, atol=1e-5)


def test_decoder_cross_attention_folding_equals_the_plain_computation():
    """Few prompt tokens with many image tokens: the folded products give the plain attention's result."""
    from samed2.model.attention import Attention

    torch.manual_seed(0)
    attention = Attention(256, 8, downsample_rate=2).eval()
    tokens, image = torch.randn(2, 9, 256), torch.randn(2, 1024, 256)
    key_mask = torch.ones(2, 9, dtype=torch.bool)
    key_mask[1, -2:] = False  # the second row's last two tokens are padding

    def plain(q, k, v, mask=None):
        return attention._attend(attention._heads(attention.q_proj(q)), attention._heads(attention.k_proj(k)),
                                 attention._heads(attention.v_proj(v)), mask)

    assert attention._few(tokens) and attention._many(image)
    torch.testing.assert_close(attention(tokens, image + 1, image), plain(tokens, image + 1, image),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(attention(image, tokens + 1, tokens, key_mask),
                               plain(image, tokens + 1, tokens, key_mask), rtol=1e-4, atol=1e-5)


def test_hiera_position_embedding_is_kept_until_its_parameters_change():
    from samed2.model import build_model

    from suite import golden_tiny_config

    trunk = build_model(golden_tiny_config()).image_encoder.trunk
    with torch.no_grad():
        first = trunk._pos_embed(16, 16)
        assert trunk._pos_embed(16, 16) is first
        assert trunk._pos_embed(8, 8).shape[1:3] == (8, 8)
        trunk.pos_embed.add_(1.0)
        changed = trunk._pos_embed(8, 8)
        torch.testing.assert_close(changed, trunk._resized_pos_embed(8, 8))
    assert trunk._pos_embed(8, 8).requires_grad, "with autograd it is computed afresh"
