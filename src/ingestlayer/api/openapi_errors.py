"""The error envelope, documented: every error answer is ``{"error": {"code", "message",
"field"?}}``, where FastAPI's generated document described a 422 as its own ``{"detail": [...]}``
(which ingestlayer never sends) and other errors not at all. A client generated from
``/openapi.json`` then read errors wrongly."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

ERROR_REF = "#/components/schemas/Error"
_FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable: validation_error, not_found, rate_limited, …")
    message: str = Field(description="What was wrong, for a person to read.")
    field: str | None = Field(
        default=None, description="The request field at fault (`batch[3].type`), if one is."
    )


class Error(BaseModel):
    error: ErrorDetail


def error_response(description: str = "Error") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ERROR_REF}}}}


def document_errors(schema: dict[str, Any]) -> None:
    """Point every 4xx and 5xx answer in ``schema`` at the envelope, in place."""
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    comps["ErrorDetail"] = ErrorDetail.model_json_schema()
    comps["Error"] = Error.model_json_schema(ref_template="#/components/schemas/{model}")
    comps["Error"].pop("$defs", None)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses") if isinstance(operation, dict) else None
            if not responses:
                continue
            for status, response in responses.items():
                if status[:1] in ("4", "5"):
                    description = response.get("description", "Error")
                    if description == "Validation Error":
                        description = "Invalid input: the message names the field"
                    responses[status] = {**response, **error_response(description)}
    for name in _FASTAPI_ERROR_SCHEMAS:
        comps.pop(name, None)
