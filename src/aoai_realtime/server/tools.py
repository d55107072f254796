"""Server-side function tools: Python callables the middle tier runs itself.

The model sees each tool's definition (added to every ``session.update`` the middle tier sends
upstream); when it calls one, the middle tier runs it, sends the ``function_call_output`` item and
then ``response.create`` once the response has ended, as the service requires. The page never
holds the tool, and sees its result only when the operator allows it.

Tools are the SDK's :class:`aoai_realtime.tools.Tool` (JSON schema from the type hints, the
docstring as description). Two demo tools ship here: :func:`current_time` (any IANA time zone)
and :func:`convert_units` (length, mass, volume, temperature).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from ..tools import Tool

__all__ = ["DEMO_TOOLS", "convert_units", "current_time", "demo_tools"]


# ------------------------------------------------------------------------------- current time


def current_time(timezone: str) -> dict[str, Any]:
    """Get the current date and time in a time zone. Use it whenever the user asks what time or
    day it is somewhere.

    Args:
        timezone: IANA time zone name, e.g. Europe/Paris, America/New_York, Asia/Tokyo or UTC,
            or a city that names its zone (Tokyo, New York).
    """
    name = timezone.strip() or "UTC"
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        zone = None
    if zone is None:
        city = _zone_of_city(name)
        if city is not None:
            name, zone = city, ZoneInfo(city)
    if zone is None:
        matches = _zone_suggestions(name)
        hint = f"; did you mean {', '.join(matches)}?" if matches else ""
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Paris{hint}"
        ) from None
    now = _dt.datetime.now(zone)
    offset = now.strftime("%z")
    return {  # what a voice answer says first comes first, as a person says it
        "time": now.strftime("%I:%M %p").lstrip("0"),
        "time_24h": now.strftime("%H:%M"),
        "date": f"{now.strftime('%A')} {now.day} {now.strftime('%B %Y')}",
        "timezone": name,
        "abbreviation": now.tzname(),
        "utc_offset": f"{offset[:3]}:{offset[3:]}" if offset else "+00:00",
    }


def _zone_of_city(name: str) -> str | None:
    """The one IANA zone whose city part is ``name`` (``Tokyo``: Asia/Tokyo), if exactly one."""
    key = name.strip().lower().replace(" ", "_")
    found = [z for z in available_timezones() if z.lower().rsplit("/", 1)[-1] == key]
    canonical = [z for z in found if not z.startswith(("Etc/", "SystemV/", "US/"))]
    return canonical[0] if len(canonical) == 1 else None


def _zone_suggestions(name: str, limit: int = 3) -> list[str]:
    key = name.lower().replace(" ", "_")
    zones = sorted(available_timezones())
    return [z for z in zones if key in z.lower()][:limit]


# ------------------------------------------------------------------------------- unit conversion

# Factors to the base unit of each quantity (metre, kilogram, litre). Temperature is affine.
_LENGTH = {
    "m": 1.0,
    "km": 1000.0,
    "cm": 0.01,
    "mm": 0.001,
    "um": 1e-6,
    "mi": 1609.344,
    "yd": 0.9144,
    "ft": 0.3048,
    "in": 0.0254,
    "nmi": 1852.0,
}
_MASS = {
    "kg": 1.0,
    "g": 0.001,
    "mg": 1e-6,
    "t": 1000.0,
    "lb": 0.45359237,
    "oz": 0.028349523125,
    "st": 6.35029318,
}
_VOLUME = {
    "l": 1.0,
    "ml": 0.001,
    "cl": 0.01,
    "dl": 0.1,
    "m3": 1000.0,
    "gal": 3.785411784,
    "qt": 0.946352946,
    "pt": 0.473176473,
    "cup": 0.2365882365,
    "floz": 0.0295735295625,
    "tbsp": 0.01478676478125,
    "tsp": 0.00492892159375,
    "impgal": 4.54609,
    "imppt": 0.56826125,
}
_TEMPERATURE = ("c", "f", "k")
_QUANTITIES: dict[str, dict[str, float]] = {"length": _LENGTH, "mass": _MASS, "volume": _VOLUME}

_ALIASES = {
    # length
    "meter": "m", "meters": "m", "metre": "m", "metres": "m",
    "kilometer": "km", "kilometers": "km", "kilometre": "km", "kilometres": "km",
    "centimeter": "cm", "centimeters": "cm", "centimetre": "cm", "centimetres": "cm",
    "millimeter": "mm", "millimeters": "mm", "millimetre": "mm", "millimetres": "mm",
    "micrometer": "um", "micrometre": "um", "micron": "um", "µm": "um",
    "mile": "mi", "miles": "mi", "yard": "yd", "yards": "yd",
    "foot": "ft", "feet": "ft", "inch": "in", "inches": "in", '"': "in", "'": "ft",
    "nauticalmile": "nmi", "nauticalmiles": "nmi",
    # mass
    "kilogram": "kg", "kilograms": "kg", "kilo": "kg", "kilos": "kg",
    "gram": "g", "grams": "g", "milligram": "mg", "milligrams": "mg",
    "tonne": "t", "tonnes": "t", "metricton": "t",
    "pound": "lb", "pounds": "lb", "lbs": "lb", "ounce": "oz", "ounces": "oz",
    "stone": "st", "stones": "st",
    # volume
    "liter": "l", "liters": "l", "litre": "l", "litres": "l",
    "milliliter": "ml", "milliliters": "ml", "millilitre": "ml", "millilitres": "ml",
    "centiliter": "cl", "centilitre": "cl", "deciliter": "dl", "decilitre": "dl",
    "cubicmeter": "m3", "cubicmetre": "m3", "m^3": "m3", "m³": "m3",
    "gallon": "gal", "gallons": "gal", "usgallon": "gal", "usgal": "gal",
    "quart": "qt", "quarts": "qt", "pint": "pt", "pints": "pt", "uspint": "pt",
    "cups": "cup", "fluidounce": "floz", "fluidounces": "floz", "fl.oz": "floz",
    "tablespoon": "tbsp", "tablespoons": "tbsp", "teaspoon": "tsp", "teaspoons": "tsp",
    "imperialgallon": "impgal", "ukgallon": "impgal", "imperialpint": "imppt", "ukpint": "imppt",
    # temperature
    "celsius": "c", "°c": "c", "degc": "c", "centigrade": "c",
    "fahrenheit": "f", "°f": "f", "degf": "f",
    "kelvin": "k", "kelvins": "k",
}  # fmt: skip


def _unit(name: str) -> str:
    key = re.sub(r"[\s_-]+", "", name.strip().lower())
    key = key.removeprefix("degrees").removeprefix("degree") or key
    return _ALIASES.get(key, key)


def _quantity(unit: str) -> str | None:
    if unit in _TEMPERATURE:
        return "temperature"
    return next((q for q, table in _QUANTITIES.items() if unit in table), None)


def _to_kelvin(value: float, unit: str) -> float:
    return {"c": value + 273.15, "f": (value - 32) * 5 / 9 + 273.15, "k": value}[unit]


def _from_kelvin(value: float, unit: str) -> float:
    return {"c": value - 273.15, "f": (value - 273.15) * 9 / 5 + 32, "k": value}[unit]


def convert_units(value: float, from_unit: str, to_unit: str) -> dict[str, Any]:
    """Convert a quantity between units of length (m, km, mi, ft, in), mass (kg, g, lb, oz),
    volume (l, ml, gal, cup, tbsp) or temperature (C, F, K).

    Args:
        value: The amount to convert.
        from_unit: The unit of the value, e.g. miles, kg, fahrenheit.
        to_unit: The unit wanted, e.g. km, lb, celsius.
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"value must be a finite number, not {value!r}")
    src, dst = _unit(from_unit), _unit(to_unit)
    q_src, q_dst = _quantity(src), _quantity(dst)
    for given, q in ((from_unit, q_src), (to_unit, q_dst)):
        if q is None:
            raise ValueError(
                f"unknown unit {given!r}: use a length (m, km, mi, ft, in), mass (kg, g, lb, oz), "
                "volume (l, ml, gal, cup) or temperature (C, F, K) unit"
            )
    if q_src != q_dst:
        raise ValueError(f"cannot convert {q_src} ({from_unit}) to {q_dst} ({to_unit})")
    if q_src == "temperature":
        if src == "k" and value < 0:
            raise ValueError("a temperature in kelvin cannot be negative")
        result = _from_kelvin(_to_kelvin(value, src), dst)
    else:
        table = _QUANTITIES[q_src or ""]
        result = value * table[src] / table[dst]
    rounded = float(f"{result:.6g}")
    shown = {"c": "°C", "f": "°F", "k": "K"}
    return {
        "quantity": q_src,
        "value": value,
        "from_unit": shown.get(src, src),
        "to_unit": shown.get(dst, dst),
        "result": rounded,
        "text": f"{value:g} {shown.get(src, src)} = {rounded:g} {shown.get(dst, dst)}",
    }


DEMO_TOOLS: tuple[Tool, ...] = (
    Tool.from_function(current_time),
    Tool.from_function(convert_units),
)


def demo_tools() -> list[Tool]:
    """The two demo tools, ``current_time`` and ``convert_units``."""
    return list(DEMO_TOOLS)
