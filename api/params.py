"""Path and query parameters shared by the routes, with the naming rules in the OpenAPI document."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from .schemas import NAME

Namespace = Annotated[str, Path(pattern=NAME, max_length=64, description="Namespace, e.g. acme.")]
Name = Annotated[str, Path(pattern=NAME, max_length=64, description="Adapter name, e.g. support-en.")]
Number = Annotated[int, Path(ge=1, le=999_999_999, description="Version number.")]
AliasName = Annotated[str, Path(pattern=NAME, max_length=64, description="Alias, e.g. prod.")]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
