"""Function tools: JSON schema from type hints, calling with the model's arguments."""

from __future__ import annotations

import asyncio
import enum
import json
import threading
from typing import Annotated, Any, Literal, Optional

import pytest
from pydantic import BaseModel

from aoai_realtime.tools import Tool, ToolRegistry, tool


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Place(BaseModel):
    city: str
    country: str = "FR"


@tool
def get_weather(
    city: Annotated[str, "The city, e.g. Paris"],
    unit: Unit = Unit.CELSIUS,
    days: int = 1,
    detailed: bool = False,
    tags: Optional[list[str]] = None,
    mode: Literal["brief", "full"] = "brief",
    ratio: float = 0.5,
) -> dict[str, Any]:
    """Get the weather forecast for a city.

    Longer explanation that is not part of the description.

    Args:
        days: How many days
            to forecast.
        detailed: Whether to include wind.
    """
    return {"city": city, "unit": unit, "days": days, "tags": tags}


def test_schema_from_type_hints_and_docstring() -> None:
    schema = get_weather.schema()
    assert schema["type"] == "function"
    assert schema["name"] == "get_weather"
    assert schema["description"] == "Get the weather forecast for a city."
    params = schema["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["city"]
    assert params["additionalProperties"] is False
    props = params["properties"]
    assert props["city"] == {"type": "string", "description": "The city, e.g. Paris"}
    assert props["unit"] == {
        "type": "string",
        "enum": ["celsius", "fahrenheit"],
        "default": "celsius",
    }
    assert props["days"] == {
        "type": "integer",
        "description": "How many days to forecast.",
        "default": 1,
    }
    assert props["detailed"]["type"] == "boolean"
    assert props["detailed"]["description"] == "Whether to include wind."
    assert props["tags"] == {"type": ["array", "null"], "items": {"type": "string"}}
    assert props["mode"] == {"type": "string", "enum": ["brief", "full"], "default": "brief"}
    assert props["ratio"] == {"type": "number", "default": 0.5}
    json.dumps(schema)  # plain JSON


def test_decorated_function_is_still_callable() -> None:
    assert get_weather("Oslo")["city"] == "Oslo"
    assert isinstance(get_weather, Tool)


async def test_run_converts_arguments_and_formats_output() -> None:
    out = await get_weather.run('{"city": "Paris", "unit": "fahrenheit", "days": 3}')
    assert json.loads(out) == {"city": "Paris", "unit": "fahrenheit", "days": 3, "tags": None}


async def test_bad_arguments_become_an_error_for_the_model() -> None:
    out = json.loads(await get_weather.run('{"city": 5}'))
    assert "city" in out["error"]
    out = json.loads(await get_weather.run('{"town": "Paris"}'))
    assert "city" in out["error"] and "town" in out["error"]
    out = json.loads(await get_weather.run("not json"))
    assert "not valid JSON" in out["error"]
    out = json.loads(await get_weather.run('{"city": "Paris", "unit": "kelvin"}'))
    assert "unit" in out["error"]


async def test_exceptions_become_an_error_output_not_a_crash() -> None:
    @tool
    def broken(x: int) -> int:
        """Always fails."""
        raise ValueError(f"cannot handle {x}")

    out = json.loads(await broken.run({"x": 3}))
    assert out == {"error": "ValueError: cannot handle 3"}


async def test_sync_tools_run_in_a_thread_and_async_tools_are_awaited() -> None:
    main = threading.get_ident()
    seen: dict[str, int] = {}

    @tool
    def sync_tool() -> str:
        """Sync."""
        seen["sync"] = threading.get_ident()
        return "s"

    @tool
    async def async_tool(delay: float = 0.0) -> list[int]:
        """Async."""
        await asyncio.sleep(delay)
        seen["async"] = threading.get_ident()
        return [1, 2]

    assert await sync_tool.run("") == "s"
    assert await async_tool.run("{}") == "[1, 2]"
    assert seen["sync"] != main
    assert seen["async"] == main
    assert async_tool.is_async and not sync_tool.is_async


async def test_pydantic_model_parameter() -> None:
    @tool(name="locate", description="Find a place.")
    def find(place: Place) -> str:
        return f"{place.city}/{place.country}"

    schema = find.schema()
    assert schema["name"] == "locate" and schema["description"] == "Find a place."
    prop = schema["parameters"]["properties"]["place"]
    assert prop["type"] == "object"
    assert prop["properties"]["city"] == {"type": "string"}
    assert "title" not in prop
    assert await find.run('{"place": {"city": "Lyon"}}') == "Lyon/FR"


def test_unsupported_signatures_say_what_to_do() -> None:
    def no_hint(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(TypeError, match="no type hint.*`x: str`"):
        Tool.from_function(no_hint)

    def star(*args: int) -> None:
        pass

    with pytest.raises(TypeError, match=r"\*args"):
        Tool.from_function(star)

    def odd(x: complex) -> None:
        pass

    with pytest.raises(TypeError, match="cannot be described"):
        Tool.from_function(odd)

    with pytest.raises(ValueError, match="not allowed"):
        Tool.from_function(lambda: None, name="has space")


async def test_registry_runs_by_name_and_reports_unknown_tools() -> None:
    def add(a: int, b: int = 2) -> int:
        """Add two numbers."""
        return a + b

    reg = ToolRegistry([get_weather, add])
    assert "add" in reg and len(reg) == 2
    assert [s["name"] for s in reg.schemas()] == ["get_weather", "add"]
    assert await reg.run("add", '{"a": 40}') == "42"
    out = json.loads(await reg.run("nope", "{}"))
    assert "unknown tool 'nope'" in out["error"] and "add" in out["error"]
    with pytest.raises(ValueError, match="two tools are named 'add'"):
        reg.add(Tool.from_function(add))
