"""Schema and behaviour agree: for every integer, number and boolean field of the request models, a value
is accepted by the model exactly when the published JSON schema says it is valid (checked with a JSON
Schema validator, as a generated client or a fuzzer would)."""
from __future__ import annotations

import typing
from typing import Literal

import jsonschema_rs
import pytest
from pydantic import BaseModel, ValidationError

from schemas.extras import ExtrasBatchImagesRequest, ExtrasSingleImageRequest
from schemas.img2img import Img2ImgRequest
from schemas.leniency import scalar_kind
from schemas.txt2img import Txt2ImgRequest

PROBES = [0, 1, -1, 2, 7, 64, 513, 1000, 1001, 16384, 16385, 0.0, 1.0, 0.5, 1.5, 12.5, -0.5, 63.9, 1000.5,
          True, False, None, "", "5", "7.5", "true", "yes", [1], {"a": 1}]
REQUIRED = {ExtrasSingleImageRequest: {"image": "AAAA"}, ExtrasBatchImagesRequest: {"imageList": []},
            Img2ImgRequest: {"init_images": ["AAAA"]}}


def _accepts(model: type[BaseModel], body: dict) -> bool:
    try:
        model.model_validate(body)
        return True
    except ValidationError:
        return False


@pytest.mark.parametrize("model", [Txt2ImgRequest, Img2ImgRequest, ExtrasSingleImageRequest,
                                   ExtrasBatchImagesRequest])
def test_scalar_fields_accept_what_the_schema_allows(model: type[BaseModel]) -> None:
    validator = jsonschema_rs.validator_for(model.model_json_schema())
    base = REQUIRED.get(model, {})
    checked = 0
    for name, field in model.model_fields.items():
        if scalar_kind(field.annotation) is None and typing.get_origin(field.annotation) is not Literal:
            continue
        for value in PROBES:
            body = {**base, name: value}
            assert _accepts(model, body) == validator.is_valid(body), (model.__name__, name, value)
            checked += 1
    assert checked > 100


def test_the_leniency_clients_rely_on_is_in_the_schema() -> None:
    schema = Txt2ImgRequest.model_json_schema()
    validator = jsonschema_rs.validator_for(schema)
    for body in ({"hr_second_pass_steps": 12.5}, {"hr_distilled_cfg": False}, {"seed": ""}, {"steps": 10.0},
                 {"enable_hr": 1}):
        assert validator.is_valid(body) and _accepts(Txt2ImgRequest, body), body
    for body in ({"steps": "20"}, {"enable_hr": "yes"}, {"steps": 0.5}):  # stricter than A1111: a 422
        assert not validator.is_valid(body) and not _accepts(Txt2ImgRequest, body), body


def test_empty_images_are_refused_by_schema_and_model() -> None:
    single = jsonschema_rs.validator_for(ExtrasSingleImageRequest.model_json_schema())
    for body in ({"image": ""}, {}):
        assert not single.is_valid(body)
    assert not _accepts(ExtrasSingleImageRequest, {"image": ""})
    assert not _accepts(ExtrasBatchImagesRequest, {"imageList": [{"data": ""}]})


def test_deep_nesting_is_refused() -> None:
    deep: object = 1
    for _ in range(65):
        deep = [deep]
    with pytest.raises(ValidationError, match="nested deeper than 64"):
        Txt2ImgRequest.model_validate({"comments": {"x": deep}})
    Txt2ImgRequest.model_validate({"comments": {"x": [[[1]]]}})
