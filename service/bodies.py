"""JSON bodies parsed by pydantic's own (Rust) parser: about 4× faster than FastAPI's json.loads + validation for
predictions, and far more for large sample uploads.

FastAPI would parse a declared body parameter itself, so the hot routes read the raw body and call `parse_json`;
`documented` puts the same model into the OpenAPI document, which therefore still describes them exactly.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)

DOCUMENTED: dict[str, type[BaseModel]] = {}


async def parse_json(request: Request, model: type[Model]) -> Model:
    """The request's body as ``model``; errors become the usual 422 (located under "body")."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def documented(model: type[BaseModel], other_media: dict[str, Any] | None = None) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the route's required JSON body (and ``other_media``: further
    request-body content entries by media type)."""
    DOCUMENTED[model.__name__] = model
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    content = {"application/json": {"schema": schema}, **(other_media or {})}
    return {"requestBody": {"required": True, "content": content}}


def add_documented_schemas(openapi: dict[str, Any]) -> dict[str, Any]:
    """Put the models of `documented` routes (and the models they use) into the OpenAPI components."""
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    for name, model in DOCUMENTED.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for sub_name, sub_schema in schema.pop("$defs", {}).items():
            components.setdefault(sub_name, sub_schema)
        components[name] = schema
    return openapi
