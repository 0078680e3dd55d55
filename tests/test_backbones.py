"""Backbones: every registered one embeds clips to (B, dim), and real weights load from disk."""
from __future__ import annotations

import pytest
import torch

from crashsearch.models.backbones import (IMAGENET_MEAN, IMAGENET_STD, Backbone, WeightsUnavailable, create_backbone,
                              list_backbones)


def _clips(backbone: Backbone, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, backbone.clip_frames, *backbone.frame_size, 3), dtype=torch.uint8, generator=g)


def test_registry_names_and_unknown_name():
    assert list_backbones() == ["vjepa2_vitl", "vjepa2_vitg", "r2plus1d_18", "mvit_v2_s", "pixels"]
    assert list_backbones("vjepa2*") == ["vjepa2_vitl", "vjepa2_vitg"]
    with pytest.raises(KeyError, match="registered: vjepa2_vitl"):
        create_backbone("resnet9000")


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_embeds_a_batch(name):
    backbone = create_backbone(name, weights="random")
    clips = _clips(backbone, batch=3)
    emb = backbone.embed(clips)
    assert emb.shape == (3, backbone.dim) and emb.dtype == torch.float32
    assert torch.isfinite(emb).all()
    assert not torch.allclose(emb[0], emb[1]), "different clips must give different embeddings"
    # deterministic: the same clips embed to the same vectors
    torch.testing.assert_close(backbone.embed(clips), emb)
    assert backbone.weights_id == ("none" if name == "pixels" else "random")
    with pytest.raises(ValueError, match="frames"):
        backbone.embed(clips[:, :-1] if backbone.clip_frames > 1 else clips.repeat(1, 2, 1, 1, 1))


def test_embed_resizes_other_frame_sizes():
    backbone = create_backbone("pixels")
    clips = torch.randint(0, 256, (2, backbone.clip_frames, 48, 80, 3), dtype=torch.uint8)
    assert backbone.embed(clips).shape == (2, backbone.dim)


def test_auto_offline_falls_back_to_random_and_says_so(monkeypatch, capsys):
    monkeypatch.setenv("CRASHSEARCH_OFFLINE", "1")
    backbone = create_backbone("vjepa2_vitl", weights="auto")
    assert backbone.weights_id == "random"
    assert backbone.frame_size == (64, 64) and backbone.clip_frames == 8  # the small offline config
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "RANDOM weights" in out and "facebook/vjepa2-vitl-fpc64-256" in out


def test_vjepa2_save_pretrained_round_trip(tmp_path):
    """A tiny V-JEPA 2 saved with save_pretrained loads back through create_backbone's real code."""
    from transformers import VJEPA2Config, VJEPA2Model

    torch.manual_seed(123)
    config = VJEPA2Config(crop_size=32, patch_size=16, tubelet_size=2, frames_per_clip=4, hidden_size=48,
                          num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2.0, num_pooler_layers=1,
                          pred_hidden_size=16, pred_num_attention_heads=2, pred_num_hidden_layers=1,
                          pred_num_mask_tokens=2)
    original = VJEPA2Model(config).eval()
    original.save_pretrained(tmp_path / "tiny-vjepa2")

    loaded = create_backbone("vjepa2_vitl", weights=str(tmp_path / "tiny-vjepa2"))
    assert loaded.weights_id == str(tmp_path / "tiny-vjepa2")
    assert (loaded.dim, loaded.clip_frames, loaded.frame_size) == (48, 4, (32, 32))

    clips = _clips(loaded, batch=2)
    x = clips.permute(0, 1, 4, 2, 3).float() / 255.0  # (B, F, 3, H, W)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    with torch.no_grad():
        expected = original(pixel_values_videos=x, skip_predictor=True).last_hidden_state.mean(dim=1)
    torch.testing.assert_close(loaded.embed(clips), expected, rtol=1e-4, atol=1e-5)

    # a model with other random weights must not match: the comparison above can fail
    torch.manual_seed(7)
    other = VJEPA2Model(config).eval()
    with torch.no_grad():
        assert not torch.allclose(other(pixel_values_videos=x, skip_predictor=True).last_hidden_state.mean(1), expected)


def test_missing_explicit_weights_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailable, match="no-such-model"):
        create_backbone("vjepa2_vitl", weights=str(tmp_path / "no-such-model"))
    with pytest.raises(WeightsUnavailable, match="missing.pth"):
        create_backbone("r2plus1d_18", weights=str(tmp_path / "missing.pth"))
