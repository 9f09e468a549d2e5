"""The OpenAPI 3.1 document, generated from the models in ``admin.schemas``.

The operations below say which model each route reads and answers with;
every schema in the document comes from pydantic, whose JSON Schema dialect
(2020-12) is the one OpenAPI 3.1 uses. A test checks that this table and the
app's routes name the same paths and methods.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from admin import schemas
from admin.privileges import LABELS, Privilege
from gateway.keys import KEY_ID_PATTERN

PROBLEM_JSON = "application/problem+json"
KEY_ID = {"type": "string", "pattern": KEY_ID_PATTERN.pattern}
USER_ID = {"type": "string", "pattern": schemas.USER_ID_REGEX}

_ERRORS = {
    400: "The body is not valid JSON.",
    401: "No credential, or an invalid, expired or revoked key.",
    403: "A privilege is missing; the problem names it.",
    404: "No such key or user, or one the caller may not see.",
    409: "The request conflicts with the current state.",
    413: "The body is larger than 64 KiB.",
    415: "The body is not application/json.",
    422: "A field breaks a rule; the problem names the field and the rule.",
    503: "The key store cannot be reached; retry after the Retry-After delay.",
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    response: type[BaseModel] | None
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: dict[str, dict[str, str]] = field(default_factory=dict)
    privileges: tuple[Privilege, ...] = ()
    errors: tuple[int, ...] = (401, 503)
    tags: tuple[str, ...] = ("keys",)


OPERATIONS = (
    Operation(
        "get", "/api/me", "getMe", "Who the caller is and what they may do.",
        schemas.Me, tags=("users",),
    ),
    Operation(
        "get", "/api/keys", "listKeys",
        "List keys: your own, or with Administration anyone's.",
        schemas.KeyList, query=schemas.KeysQuery,
        privileges=(Privilege.OPEN,), errors=(401, 403, 404, 422, 503),
    ),
    Operation(
        "post", "/api/keys", "createKey",
        "Create a key; the response is the only place the key appears.",
        schemas.CreatedKey, status=201, body=schemas.KeyCreate,
        privileges=(Privilege.OPEN, Privilege.CREATE),
        errors=(400, 401, 403, 409, 413, 415, 422, 503),
    ),
    Operation(
        "get", "/api/keys/{key_id}", "getKey", "One key.", schemas.Key,
        path_params={"key_id": KEY_ID}, privileges=(Privilege.OPEN,),
        errors=(401, 403, 404, 503),
    ),
    Operation(
        "patch", "/api/keys/{key_id}", "editKey",
        "Change a key's name, description or expiration.",
        schemas.Key, body=schemas.KeyEdit, path_params={"key_id": KEY_ID},
        privileges=(Privilege.OPEN, Privilege.EDIT),
        errors=(400, 401, 403, 404, 413, 415, 422, 503),
    ),
    Operation(
        "delete", "/api/keys/{key_id}", "deleteKey",
        "Revoke a key; answers once every replica has been told.",
        None, status=204, path_params={"key_id": KEY_ID},
        privileges=(Privilege.OPEN, Privilege.DELETE),
        errors=(401, 403, 404, 503),
    ),
    Operation(
        "get", "/api/users", "listUsers", "List users.", schemas.UserList,
        query=schemas.UsersQuery,
        privileges=(Privilege.OPEN, Privilege.ADMIN), errors=(401, 403, 422, 503),
        tags=("users",),
    ),
    Operation(
        "patch", "/api/users/{user_id}", "editUser",
        "Disable, enable or rename a user; a disabled user's keys stop working.",
        schemas.UserOut, body=schemas.UserEdit, path_params={"user_id": USER_ID},
        privileges=(Privilege.OPEN, Privilege.ADMIN),
        errors=(400, 401, 403, 404, 409, 413, 415, 422, 503), tags=("users",),
    ),
    Operation(
        "get", "/api/audit", "listAudit", "The audit trail, newest first.",
        schemas.AuditPage, query=schemas.AuditQuery,
        privileges=(Privilege.OPEN, Privilege.ADMIN), errors=(401, 403, 422, 503),
        tags=("audit",),
    ),
)  # fmt: skip


def _parameters(operation: Operation, defs: dict[str, Any]) -> list[dict[str, Any]]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in operation.path_params.items()
    ]
    if operation.query is not None:
        query_schema = operation.query.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        required = set(query_schema.get("required", ()))
        for name, schema in query_schema["properties"].items():
            schema = _without_null(schema)
            schema.pop("title", None)
            description = schema.pop("description", None)
            parameter = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": schema,
            }
            if description:
                parameter["description"] = description
            parameters.append(parameter)
    return parameters


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: a query string cannot carry null.

    An optional parameter is simply left out, so the model's ``X | None``
    becomes the schema of X.
    """
    schema = dict(schema)
    branches = schema.pop("anyOf", None)
    if branches is not None:
        kept = [branch for branch in branches if branch != {"type": "null"}]
        if len(kept) == 1:
            schema.update(kept[0])
        else:
            schema["anyOf"] = kept
    if schema.get("default", ...) is None:
        del schema["default"]
    return schema


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(operation: Operation, defs: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if operation.response is None:
        responses[str(operation.status)] = {"description": "Done."}
    else:
        responses[str(operation.status)] = {
            "description": "Success.",
            "content": {"application/json": {"schema": _ref(operation.response)}},
        }
    problem = {PROBLEM_JSON: {"schema": _ref(schemas.Problem)}}
    for status in operation.errors:
        responses[str(status)] = {"description": _ERRORS[status], "content": problem}
    description = ""
    if operation.privileges:
        names = ", ".join(LABELS[p] for p in operation.privileges)
        description = f"Requires: {names}."
    spec: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": list(operation.tags),
        "responses": responses,
    }
    if description:
        spec["description"] = description
    parameters = _parameters(operation, defs)
    if parameters:
        spec["parameters"] = parameters
    if operation.body is not None:
        spec["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(operation.body)}},
        }
    return spec


Mode = Literal["validation", "serialization"]


def _models() -> list[tuple[type[BaseModel], Mode]]:
    models: list[tuple[type[BaseModel], Mode]] = [(schemas.Problem, "serialization")]
    for operation in OPERATIONS:
        if operation.body is not None:
            models.append((operation.body, "validation"))
        if operation.response is not None:
            models.append((operation.response, "serialization"))
    return list(dict.fromkeys(models))


def build_document(sso_header: str | None = None) -> dict[str, Any]:
    """The whole document; the SSO scheme appears only when configured."""
    return copy.deepcopy(_document(sso_header))


@cache
def _document(sso_header: str | None) -> dict[str, Any]:
    _, top = models_json_schema(_models(), ref_template="#/components/schemas/{model}")
    defs: dict[str, Any] = top.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method] = _operation(
            operation, defs
        )
    paths["/openapi.json"] = {
        "get": {
            "operationId": "getOpenApi",
            "summary": "This document.",
            "tags": ["meta"],
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    schemes: dict[str, Any] = {
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "Your own RPA API key, as 'Authorization: Bearer rpa_...'.",
        }
    }
    security: list[dict[str, list[str]]] = [{"apiKey": []}]
    if sso_header:
        schemes["sso"] = {
            "type": "apiKey",
            "in": "header",
            "name": sso_header,
            "description": "Set by a trusted single-sign-on proxy only.",
        }
        security.append({"sso": []})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "RPA Gateway admin API",
            "version": "1",
            "description": (
                "Create, list, edit and revoke RPA Manager User API Keys. "
                "Errors are RFC 9457 problem documents."
            ),
        },
        "paths": paths,
        "components": {"schemas": defs, "securitySchemes": schemes},
        "security": security,
    }
