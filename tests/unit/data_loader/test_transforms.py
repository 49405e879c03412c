"""Tests for data_loader/transforms.py: transforms from config by name, the image pipeline, and mistakes named with
the fix."""
from __future__ import annotations

import pytest
import torch

from data_loader.transforms import build_transforms, image_pipeline
from utils.errors import UserError


def test_transforms_by_name_with_args_nested_and_in_order():
    from torchvision.transforms import v2

    built = build_transforms(["RandomHorizontalFlip", {"type": "RandomCrop", "args": {"size": 8, "padding": 2}},
                              {"type": "RandomApply", "args": {"transforms": [{"type": "ColorJitter",
                                                                               "args": {"brightness": 0.2}}]}}],
                             "data_loader.args.transforms")
    assert [type(t) for t in built] == [v2.RandomHorizontalFlip, v2.RandomCrop, v2.RandomApply]
    assert built[1].size == (8, 8) and built[1].padding == [2, 2, 2, 2]
    assert isinstance(built[2].transforms[0], v2.ColorJitter)


def test_the_pipeline_converts_then_normalises_once():
    image = (torch.arange(108) + 100).to(torch.uint8).reshape(3, 6, 6)  # the crop holds 128: x / 255 near 0.5
    out = image_pipeline([{"type": "CenterCrop", "args": {"size": 4}}], [0.5] * 3, [0.25] * 3, "t")(image)
    assert type(out) is torch.Tensor and out.dtype == torch.float32
    # to float32 within a rounding (torchvision scales by a multiplication, x * (1 / 255), not a division): near
    # x / 255 = 0.5 the subtraction leaves that rounding as the whole difference
    torch.testing.assert_close(out, (image[:, 1:5, 1:5].float() / 255 - 0.5) / 0.25, rtol=0, atol=1e-6)
    # ToDtype listed: the conversion happens there (a dtype by name), not again
    listed = image_pipeline([{"type": "ToDtype", "args": {"dtype": "float32", "scale": True}},
                             {"type": "Resize", "args": {"size": 6, "interpolation": "nearest"}}], [0.0], [1.0], "t")
    assert torch.allclose(listed(image), image.float() / 255)
    with pytest.raises(UserError, match=r"t\[0\]\.args\.dtype: 'float3' is not a torch dtype"):
        image_pipeline([{"type": "ToDtype", "args": {"dtype": "float3"}}], [0.0], [1.0], "t")


@pytest.mark.parametrize("spec, message", [
    (["RandomCorp"], r"transforms\[0\]\.type: no transform 'RandomCorp' in torchvision\.transforms\.v2\. "
                     r"Did you mean 'RandomCrop'"),
    ([{"type": "RandomCrop", "args": {"sise": 4}}], r"transforms\[0\]\.args: RandomCrop\(sise=4\) failed: .*sise"),
    (["RandomHorizontalFlip", "Normalize"], r"transforms\[1\]\.type: Normalize cannot be listed: the pipeline "
                                            r"normalises last: set mean and std"),
    (["ToTensor"], r"ToTensor cannot be listed: the pipeline converts images to tensors first"),
    (["MixUp"], r"MixUp cannot be listed: it mixes whole batches"),
    ([{"type": "RandomApply", "args": {"transforms": ["Blur"]}}], r"transforms\[0\]\.args\.transforms\[0\]\.type"),
    ([{"kind": "RandomCrop"}], r"transforms\[0\]: expected a transform name or"),
    ("RandomCrop", r"transforms: expected a list of transforms"),
])
def test_bad_transforms_are_named_with_the_fix(spec, message):
    with pytest.raises(UserError, match=message):
        build_transforms(spec, "data_loader.args.transforms")
