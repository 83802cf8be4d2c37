"""schemas/extras.py: A1111's extras request/response models, leniently validated."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.extras import (
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
)
from upscalers import ExtrasParams


def test_defaults_match_a1111() -> None:
    req = ExtrasSingleImageRequest()
    assert req.model_dump() == {
        "resize_mode": 0,
        "show_extras_results": True,
        "gfpgan_visibility": 0.0,
        "codeformer_visibility": 0.0,
        "codeformer_weight": 0.0,
        "upscaling_resize": 2.0,
        "upscaling_resize_w": 512,
        "upscaling_resize_h": 512,
        "upscaling_crop": True,
        "upscaler_1": "None",
        "upscaler_2": "None",
        "extras_upscaler_2_visibility": 0.0,
        "upscale_first": False,
        "image": "",
    }


def test_webuiapi_style_payload_is_accepted() -> None:
    req = ExtrasBatchImagesRequest.model_validate(
        {
            "resize_mode": 1.0,
            "upscaling_resize_w": 1024.0,
            "upscaling_resize_h": 768,
            "upscaler_1": "SwinIR_4x",
            "upscaler_2": None,
            "imageList": [{"data": "data:image/png;base64,AAAA", "name": "image00001"}, {"data": "AAAA"}],
            "forge_only_field": {"x": 1},
        }
    )
    assert req.resize_mode == 1 and req.upscaling_resize_w == 1024 and req.upscaler_2 == "None"
    assert [f.data for f in req.imageList] == ["data:image/png;base64,AAAA", "AAAA"]
    params = ExtrasParams.from_mapping(req.model_dump())
    assert params.resize_mode == 1 and params.upscaler_1 == "SwinIR_4x"


@pytest.mark.parametrize(
    "field, value",
    [
        ("resize_mode", 2),
        ("resize_mode", 0.5),
        ("upscaling_resize", 0),
        ("upscaling_resize", -1),
        ("upscaling_resize", float("inf")),
        ("upscaling_resize_w", 0),
        ("upscaling_resize_h", 10.5),
        ("gfpgan_visibility", 1.5),
        ("codeformer_weight", -0.1),
        ("extras_upscaler_2_visibility", 2),
    ],
)
def test_constraints(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        ExtrasSingleImageRequest.model_validate({field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_factor_above_eight_is_allowed_as_in_v1_10() -> None:
    assert ExtrasSingleImageRequest(upscaling_resize=16).upscaling_resize == 16


def test_batch_needs_an_image_list() -> None:
    with pytest.raises(ValidationError):
        ExtrasBatchImagesRequest.model_validate({})


def test_responses() -> None:
    assert ExtrasSingleImageResponse(html_info="<p></p>", image="AAAA").model_dump() == {
        "html_info": "<p></p>",
        "image": "AAAA",
    }
    assert ExtrasBatchImagesResponse(html_info="", images=["A", "B"]).model_dump()["images"] == ["A", "B"]
