"""GET /v1/models/{name} shows each version's runtime, its verification and its speed-up."""

from __future__ import annotations

from typing import Any


async def test_the_model_description_shows_the_runtime(api: Any) -> None:
    async with api() as c:
        iris = (await c.get("/v1/models/iris")).json()
        rt = iris["runtime"]
        assert rt["name"] == "treelite" and rt["requested"] == "auto"
        assert rt["verification"]["passed"] and rt["verification"]["labels_equal"]
        assert rt["verification"]["max_abs_diff"] <= 1e-9
        assert rt["library_version"] and rt["speed"][0]["speedup"] > 0
        mixed = (await c.get("/v1/models/mixed/versions/1")).json()
        assert mixed["runtime"]["name"] == "sklearn"
        assert "not a tree ensemble" in mixed["runtime"]["reason"]
        doc = (await c.get("/openapi.json")).json()
        assert "runtime" in doc["components"]["schemas"]["ModelDetail"]["properties"]
