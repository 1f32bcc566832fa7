"""engine/packed_convs.py: the image side's convolutions with oneDNN-packed weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_causalseg.engine import Segmenter, SegmenterConfig, save_checkpoint
from napari_causalseg.engine.bn_folding import fold_batchnorm_
from napari_causalseg.engine.causal import CoordConv
from napari_causalseg.engine.encoders import DenseAttentionPool
from napari_causalseg.engine.packed_convs import (
    PackedBottleneck,
    PackedConv2d,
    PackedCoordConv,
    fuse_relus_,
    pack_convolutions_,
    packing_available,
)
from napari_causalseg.engine.resnet import Bottleneck
from napari_causalseg.testing.reference import with_batchnorm_statistics

from .conftest import NOTE

needs_packing = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN packed convolutions")


def convs(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


@needs_packing
def test_segmenter_packs_the_image_side_and_agrees_with_the_unpacked_model(tmp_path, tiny_model, xray):
    model = with_batchnorm_statistics(tiny_model).eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model)
    owned = Segmenter.from_checkpoint(path, SegmenterConfig(device="cpu"))
    image_side = (owned.model.vision, owned.model.intervention)
    assert sum(convs(part, nn.Conv2d) for part in image_side) == 0  # every one was replaced
    assert sum(convs(part, PackedConv2d) for part in image_side) == convs(model.vision, nn.Conv2d) + convs(
        model.intervention, nn.Conv2d)
    assert convs(owned.model.causal_decoder, PackedConv2d) == 0  # the decoders have their own path
    # every ReLU and residual add of the image side is fused into a packed convolution
    assert sum(convs(part, nn.ReLU) + convs(part, Bottleneck) for part in image_side) == 0
    assert convs(owned.model.vision, PackedBottleneck) == convs(model.vision, Bottleneck) > 0
    assert convs(owned.model.intervention, PackedCoordConv) == convs(model.intervention, CoordConv) > 0
    assert owned.model.vision.backbone.attnpool.packed is not None
    plain = Segmenter(model, SegmenterConfig(device="cpu"))  # a caller's model: left as it is
    assert convs(plain.model, PackedConv2d) == 0 and plain.model.vision.backbone.attnpool.packed is None
    a, b = plain.image_features(xray), owned.image_features(xray)
    scale = a.pixels.abs().max().item()
    assert (a.pixels - b.pixels).abs().max().item() <= 1e-5 * scale
    assert abs(a.confounder - b.confounder).max() < 1e-5
    a, b = plain.segment(xray, NOTE), owned.segment(xray, NOTE)
    assert abs(a.probability - b.probability).max() < 1e-5


@needs_packing
@pytest.mark.parametrize("stride,padding,bias", [(1, 1, True), (2, 1, False), (1, 0, True)])
def test_packed_conv_computes_conv2d_at_other_sizes_and_layouts(stride, padding, bias):
    """Packed for one input size, it still computes conv2d for another batch and size and
    for a channels-last input (the dense pool hands the intervention such a tensor)."""
    torch.manual_seed(0)
    k = 3 if padding else 1
    conv = nn.Conv2d(12, 20, k, stride=stride, padding=padding, bias=bias)
    packed = PackedConv2d(conv, [1, 12, 14, 14])
    for x in (torch.randn(1, 12, 14, 14), torch.randn(3, 12, 9, 17),
              torch.randn(2, 12, 10, 10).contiguous(memory_format=torch.channels_last)):
        with torch.inference_mode():
            torch.testing.assert_close(packed(x), conv(x), rtol=1e-5, atol=1e-5)


@needs_packing
def test_packed_coordconv_computes_the_coordconv_at_other_sizes_and_batches():
    """The coordinates' share as a per-size map added in the convolution's pass: the
    CoordConv's numbers for the size it was packed for, another size (a new map) and a
    batch of several (the map broadcast), channels-last or not; its weight released."""
    torch.manual_seed(3)
    coord = CoordConv(6, 5).eval()
    with torch.no_grad():
        coord.conv[1].running_mean.normal_()
        want = {}
        inputs = [torch.randn(1, 6, 7, 7), torch.randn(3, 6, 5, 9).contiguous(memory_format=torch.channels_last)]
        for x in inputs:
            want[x.shape] = coord(x)
    model = nn.Sequential(coord)
    fold_batchnorm_(model)
    weight, released = coord.conv[0].weight, []
    assert pack_convolutions_(model, lambda: model(inputs[0]), release=released.append) == 1
    assert isinstance(model[0], PackedCoordConv) and released == [weight]
    with torch.inference_mode():
        for x in inputs + inputs:  # twice: the second time from the kept maps
            torch.testing.assert_close(model(x), want[x.shape], rtol=1e-5, atol=1e-5)
    assert sorted(model[0].maps) == [(5, 9), (7, 7)]
    assert (want[inputs[1].shape] == 0).any()  # the ReLU mattered


@needs_packing
def test_dense_pool_with_packed_projections_computes_the_same_and_releases_its_weights():
    """q|k|v as one packed product and c_proj packed: the pool's numbers at other batch
    and grid sizes too (bicubic positions), each source weight handed to `release`."""
    torch.manual_seed(2)
    pool = DenseAttentionPool(grid=4, in_dim=32, heads=4, out_dim=16).eval()
    with torch.no_grad():
        pool.connect[1].running_mean.normal_()  # BN with statistics, as after training
    inputs = [torch.randn(1, 32, 4, 4), torch.randn(3, 32, 5, 6).contiguous(memory_format=torch.channels_last)]
    with torch.inference_mode():
        want = [pool(x) for x in inputs]
    released = []
    assert pool.pack_projections_(release=released.append)
    assert released == [pool.q_proj.weight, pool.k_proj.weight, pool.v_proj.weight, pool.c_proj.weight]
    with torch.inference_mode():
        for x, expected in zip(inputs, want):
            torch.testing.assert_close(pool(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="float32 on the CPU"):
        pool(inputs[0].double())
    assert not DenseAttentionPool(grid=2, in_dim=8, heads=2, out_dim=4).double().pack_projections_()


@needs_packing
def test_packed_conv_refuses_what_it_cannot_run():
    packed = PackedConv2d(nn.Conv2d(4, 4, 3, padding=1), [1, 4, 8, 8])
    with pytest.raises(RuntimeError, match="float32 on the CPU"):
        packed(torch.randn(1, 4, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="zero padding"):
        PackedConv2d(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), [1, 4, 8, 8])


@needs_packing
def test_only_the_convolutions_that_run_are_packed_and_each_old_weight_is_released():
    torch.manual_seed(1)
    used, unused = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 5, 1)
    model = nn.ModuleDict({"block": nn.Sequential(used, nn.ReLU()), "spare": unused})
    x = torch.randn(1, 3, 8, 8)
    want = F.relu(used(x))
    released, weight = [], used.weight
    assert pack_convolutions_(model, lambda: model["block"](x), release=released.append) == 1
    assert isinstance(model["block"][0], PackedConv2d) and model["spare"] is unused
    assert len(released) == 1 and released[0] is weight and used.weight is None
    with torch.inference_mode():
        torch.testing.assert_close(model["block"](x), want, rtol=1e-5, atol=1e-6)


@needs_packing
def test_relus_are_fused_only_where_one_follows_the_convolution():
    """conv -> (folded BN) -> ReLU becomes one fused op; a conv whose output goes on
    without a ReLU keeps it; a Bottleneck's ReLUs and residual add go into its convs."""
    torch.manual_seed(2)
    first, second = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 1)
    seq = nn.Sequential(first, nn.Identity(), nn.ReLU(), second, nn.Sigmoid(), nn.ReLU())
    block = Bottleneck(6, 2).eval()
    with torch.no_grad():
        for i in (1, 2, 3):
            setattr(block, f"bn{i}", nn.Identity())
        for conv in (block.conv1, block.conv2, block.conv3):
            conv.weight.normal_()
    model = nn.Sequential(seq, block)
    x = torch.randn(2, 3, 9, 7)
    with torch.no_grad():
        want = model(x)
    pack_convolutions_(model, lambda: model(x))
    assert isinstance(model[0][0], PackedConv2d) and model[0][0].relu
    assert isinstance(model[0][2], nn.Identity)
    assert isinstance(model[0][3], PackedConv2d) and not model[0][3].relu
    assert isinstance(model[0][5], nn.ReLU)  # after a sigmoid, not a convolution
    assert isinstance(model[1], PackedBottleneck)
    assert fuse_relus_(model) == 0  # nothing left to fuse
    with torch.inference_mode():
        got = model(x)
    assert (want > 0).any() and (want == 0).any()  # the ReLUs and the shortcut mattered
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_packing
def test_each_replaced_weight_is_freed_before_the_next_convolution_is_packed():
    """The old and the packed weights of the whole image side are never held at once:
    a weight in the process's own memory (a folded copy) is gone before the next packing."""
    import weakref

    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 8, 8)
    want = model(x).detach()
    refs, alive_at_release = [], []

    def release(weight):
        alive_at_release.append(sum(ref() is not None for ref in refs))
        refs.append(weakref.ref(weight))

    assert pack_convolutions_(model, lambda: model(x), release=release) == 3
    assert alive_at_release == [0, 0, 0] and all(ref() is None for ref in refs)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)
