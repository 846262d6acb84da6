"""Site-file schema for protection schemes (one per breaker)."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict


class ProtectionScheme(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    breaker: str

    def referenced_points(self) -> Iterator[str]:
        return iter(())
