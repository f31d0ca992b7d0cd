"""The CLIP backbone against open_clip's own modules and block-by-block references."""
from __future__ import annotations

import errno
import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F

from engine import cli
from models.backbone import BackboneConfig, ClipBackbone, build_backbone, build_clip
from utils.errors import UserError

TOL = 1e-5


@pytest.fixture()
def backbone(tiny_model) -> ClipBackbone:
    return build_backbone(BackboneConfig(model=tiny_model, pretrained="none", image_size=32))


def _images(n: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _prefix(visual, images, pos):
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + pos
    return visual.ln_pre(x)


def _vv_attention(block, h):
    """Value-value attention written out: softmax(v vᵀ / sqrt(d)) v per head, then out_proj."""
    attn = block.attn
    width = h.shape[-1]
    v = h @ attn.in_proj_weight[2 * width:].T + attn.in_proj_bias[2 * width:]
    heads, b, n = attn.num_heads, h.shape[0], h.shape[1]
    v = v.view(b, n, heads, width // heads).transpose(1, 2)
    weights = torch.softmax(v @ v.transpose(-1, -2) * (width // heads) ** -0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, width)
    return out @ attn.out_proj.weight.T + attn.out_proj.bias


def test_cls_and_layers_match_open_clip(backbone):
    images = _images(3)
    feats = backbone.encode_image(images, layers=[1, 3, 4])
    clip = backbone.clip
    with torch.no_grad():
        expected = clip.encode_image(images)
        x = _prefix(clip.visual, images, clip.visual.positional_embedding)
        outputs = {}
        for index, block in enumerate(clip.visual.transformer.resblocks, start=1):
            x = block(x)
            outputs[index] = x
    torch.testing.assert_close(feats.cls, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(feats.cls_raw, x[:, 0] @ clip.visual.proj, atol=TOL, rtol=0)
    assert sorted(feats.patch_raw) == [1, 3, 4]
    for layer in (1, 3, 4):
        torch.testing.assert_close(feats.patch_raw[layer], outputs[layer][:, 1:], atol=TOL, rtol=0)
        projected = clip.visual.ln_post(outputs[layer][:, 1:]) @ clip.visual.proj
        torch.testing.assert_close(feats.patch_proj[layer], projected, atol=TOL, rtol=0)
    assert feats.vv_proj is None


@pytest.mark.parametrize("vv_start", [1, 2, 4])
def test_vv_path_matches_reference(backbone, vv_start):
    images = _images(2)
    feats = backbone.encode_image(images, layers=[2, 4], vv_start=vv_start)
    visual = backbone.clip.visual
    with torch.no_grad():
        x = _prefix(visual, images, visual.positional_embedding)
        vv = None
        for index, block in enumerate(visual.transformer.resblocks, start=1):
            if index == vv_start:
                vv = x.clone()
            if vv is not None:
                vv = vv + _vv_attention(block, block.ln_1(x))
            x = block(x)
        expected_vv = visual.ln_post(vv[:, 1:]) @ visual.proj
        expected_cls = visual.ln_post(x[:, 0]) @ visual.proj
    torch.testing.assert_close(feats.vv_proj, expected_vv, atol=TOL, rtol=0)
    # the original path is untouched by the V-V path
    torch.testing.assert_close(feats.cls, expected_cls, atol=TOL, rtol=0)
    assert feats.vv_proj.shape == (2, backbone.grid_size ** 2, backbone.embed_dim)


def test_batch_equals_single_images(backbone):
    images = _images(4)
    batch = backbone.encode_image(images, layers=[2, 4], vv_start=2)
    for i in range(4):
        one = backbone.encode_image(images[i:i + 1], layers=[2, 4], vv_start=2)
        torch.testing.assert_close(one.cls, batch.cls[i:i + 1], atol=TOL, rtol=0)
        torch.testing.assert_close(one.cls_raw, batch.cls_raw[i:i + 1], atol=TOL, rtol=0)
        torch.testing.assert_close(one.vv_proj, batch.vv_proj[i:i + 1], atol=TOL, rtol=0)
        for layer in (2, 4):
            torch.testing.assert_close(one.patch_raw[layer], batch.patch_raw[layer][i:i + 1], atol=TOL, rtol=0)


def test_text_from_embeddings_matches_open_clip(backbone):
    tokens = backbone.tokenize(["a photo of a damaged bottle", "object", "a flawless metal nut ."])
    expected = backbone.clip.encode_text(tokens)
    got = backbone.encode_text_embeddings(backbone.token_embedding(tokens), tokens.argmax(-1))
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(backbone.encode_text(tokens), expected, atol=TOL, rtol=0)


def test_deep_prompts_overwrite_exactly_their_layers(backbone):
    clip = backbone.clip
    tokens = backbone.tokenize(["N N N N N object .", "N N N N N A A damaged object ."])
    embeds = backbone.token_embedding(tokens)
    eot = tokens.argmax(-1)
    n_ctx, depth = 2, 3  # layers 2 and 3 get prompts
    prompts = [torch.randn(n_ctx, backbone.text_width) for _ in range(depth - 1)]

    def reference(deep):
        x = embeds + clip.positional_embedding
        for index, block in enumerate(clip.transformer.resblocks):
            if deep is not None and 1 <= index <= len(deep):
                x = x.clone()
                x[:, 1:1 + n_ctx] = deep[index - 1]
            x = block(x, attn_mask=clip.attn_mask)
        return clip.ln_final(x[torch.arange(len(x)), eot]) @ clip.text_projection

    with torch.no_grad():
        expected = reference(prompts)
        plain = reference(None)
    got = backbone.encode_text_embeddings(embeds, eot, prompts)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    assert (got - plain).abs().max() > 1e-3  # the prompts really act
    # a prompt for layer 2 only equals the reference with one prompt; layer 4 is never touched
    got_one = backbone.encode_text_embeddings(embeds, eot, prompts[:1])
    with torch.no_grad():
        torch.testing.assert_close(got_one, reference(prompts[:1]), atol=TOL, rtol=0)


def test_text_gradients_reach_the_embeddings(backbone):
    tokens = backbone.tokenize(["X bottle"])
    embeds = backbone.token_embedding(tokens).requires_grad_(True)
    deep = [torch.zeros(2, backbone.text_width, requires_grad=True)]
    backbone.encode_text_embeddings(embeds, tokens.argmax(-1), deep).sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    assert deep[0].grad is not None and deep[0].grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def _openai_state_dict(clip) -> dict:
    state = {k: v.clone() for k, v in clip.state_dict().items()}
    state["input_resolution"] = 32
    state["context_length"] = 77
    state["vocab_size"] = 49408
    return state


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_openai_state_dict_loads_and_pos_embed_interpolates(tiny_model, tmp_path, mode):
    source = open_clip.create_model(tiny_model)
    for param in source.parameters():  # random values unlike any fresh init
        param.data.normal_(0, 0.05)
    path = tmp_path / "tiny-openai.pt"
    torch.save(_openai_state_dict(source), path)

    native = build_backbone(BackboneConfig(model=tiny_model, pretrained=str(path), image_size=32))
    assert native.activation == "quick_gelu"  # OpenAI format implies QuickGELU
    for key, value in source.state_dict().items():
        torch.testing.assert_close(native.clip.state_dict()[key], value, atol=0, rtol=0)

    larger = build_backbone(BackboneConfig(model=tiny_model, pretrained=str(path), image_size=48,
                                           pos_interpolation=mode))
    assert larger.grid_size == 6
    pos = source.visual.positional_embedding.detach()
    grid = pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    kwargs = {"antialias": True} if mode == "bicubic" else {}
    grid = F.interpolate(grid, size=(6, 6), mode=mode, align_corners=False, **kwargs)
    expected = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(36, -1)])
    torch.testing.assert_close(larger.clip.visual.positional_embedding, expected, atol=1e-6, rtol=0)
    feats = larger.encode_image(_images(1, 48), layers=[4])
    assert feats.patch_raw[4].shape == (1, 36, larger.vision_width)


def test_torchscript_archive_loads(tiny_model, tmp_path):
    source = open_clip.create_model(tiny_model)
    path = tmp_path / "tiny-jit.pt"
    torch.jit.save(torch.jit.script(source), path)
    loaded = build_backbone(BackboneConfig(model=tiny_model, pretrained=str(path), image_size=32))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.clip.state_dict()[key], value, atol=0, rtol=0)


def test_activation_switch(tiny_model):
    gelu = build_backbone(BackboneConfig(model=tiny_model, pretrained="none", image_size=32,
                                          activation="gelu"))
    quick = build_backbone(BackboneConfig(model=tiny_model, pretrained="none", image_size=32,
                                           activation="quick_gelu"))
    assert gelu.activation == "gelu" and quick.activation == "quick_gelu"
    blocks = list(quick.clip.visual.transformer.resblocks) + list(quick.clip.transformer.resblocks)
    assert all(type(b.mlp.gelu).__name__ == "QuickGELU" for b in blocks)
    quick.load_state_dict(gelu.state_dict())
    images = _images(1)
    diff = (gelu.encode_image(images).cls - quick.encode_image(images).cls).abs().max()
    assert diff > 1e-6  # same weights, different activation


def test_backbone_is_frozen(backbone):
    assert all(not p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training and not backbone.clip.training


def test_random_weights_warn_loudly(tiny_model, caplog):
    with caplog.at_level(logging.WARNING):
        build_clip(BackboneConfig(model=tiny_model, pretrained="none"))
    assert "RANDOM weights" in caplog.text


def test_clear_errors(tiny_model, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="file not found"):
        build_clip(BackboneConfig(model=tiny_model, pretrained=str(tmp_path / "missing.pt")))
    with pytest.raises(UserError, match="unknown open_clip model"):
        build_clip(BackboneConfig(model="no-such-model", pretrained="none"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable weight file"):
        build_clip(BackboneConfig(model=tiny_model, pretrained=str(junk)))
    other = open_clip.create_model("ViT-B-32")
    wrong = tmp_path / "wrong.pt"
    torch.save(other.state_dict(), wrong)
    with pytest.raises(UserError, match="does not fit --model"):
        build_clip(BackboneConfig(model=tiny_model, pretrained=str(wrong)))
    with pytest.raises(ValueError, match="image size 30 is not a multiple of the patch size"):
        build_backbone(BackboneConfig(model=tiny_model, pretrained="none", image_size=30))
    with pytest.raises(UserError, match=f"--model {tiny_model} at --image_size 30: image size 30 is not a multiple"):
        cli.build_backbone(BackboneConfig(model=tiny_model, pretrained="none", image_size=30))


def _wrapped(cause: Exception):
    """A create_model stand-in that fails as open_clip does: its own error raised while handling
    the underlying one."""
    def create_model(*args, **kwargs):
        try:
            raise cause
        except Exception as err:
            raise RuntimeError(f"Failed to download weights for tag 'openai': {err}")
    return create_model


def _unwrapped(cause: Exception):
    def create_model(*args, **kwargs):
        raise cause
    return create_model


@pytest.mark.parametrize("create_model, expected", [
    (_wrapped(ConnectionError("connection refused")),
     r"could not download .*pass --pretrained /path/to/ViT-L-14-336px.pt"),
    (_wrapped(OSError(errno.ENOSPC, "No space left on device")), r"no space left on the disk .*--cache_dir"),
    (_unwrapped(RuntimeError("Model has been downloaded but the SHA256 checksum does not not match")),
     r"failed their integrity check .*delete the download from /tmp/cache"),
    (_unwrapped(RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory")),
     r"cached copy .* is unreadable.*failed finding central directory.*delete it from /tmp/cache"),
    (_unwrapped(ValueError("something else entirely")),
     r"open_clip could not create ViT-L-14-336 .*\(ValueError: something else entirely\)"),
])
def test_weight_download_failures_keep_their_cause(monkeypatch, create_model, expected):
    monkeypatch.setattr(open_clip, "create_model", create_model)
    with pytest.raises(UserError, match=expected) as err:
        build_clip(BackboneConfig(model="ViT-L-14-336", pretrained="openai", cache_dir="/tmp/cache"))
    assert "\n" not in str(err.value)


def test_unknown_model_keeps_the_cause(monkeypatch):
    def broken(name):
        raise OSError("hub unreachable")

    monkeypatch.setattr(open_clip, "get_model_config", broken)
    with pytest.raises(UserError, match=r"--model hf-hub:x/y: .*\(hub unreachable\)"):
        build_clip(BackboneConfig(model="hf-hub:x/y", pretrained="openai"))
