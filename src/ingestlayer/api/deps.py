"""FastAPI dependencies: the runtime and the authenticated project."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ingestlayer.api.auth import Principal, authenticate
from ingestlayer.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def admin_principal(request: Request) -> Principal:
    return await authenticate(get_runtime(request).keys, request.headers.get("authorization"), admin=True)


async def any_principal(request: Request) -> Principal:
    return await authenticate(get_runtime(request).keys, request.headers.get("authorization"), admin=False)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
Admin = Annotated[Principal, Depends(admin_principal)]
AnyKey = Annotated[Principal, Depends(any_principal)]
