"""The demo's task: turn a customer's order message into one line of JSON.

A structured-output job a 135M model gets wrong out of the box (it chats, adds code fences,
renames keys, writes the quantity as a word) and can learn from a few hundred examples. Cases
come from a seed, so there are as many fresh ones as the demo needs and a run can be repeated.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

SCENARIO = "orders"
SYSTEM = "Extract the order as JSON with the keys name, qty, item and city. Answer with the JSON only."

_FIRST = [
    "Maria",
    "Jonas",
    "Aiko",
    "Pedro",
    "Fatima",
    "Liam",
    "Chen",
    "Olga",
    "Kwame",
    "Sofia",
    "Ravi",
    "Emma",
    "Tomas",
    "Leila",
    "Noah",
    "Ines",
    "Yusuf",
    "Hana",
    "Marco",
    "Zoe",
    "Arjun",
    "Clara",
    "Diego",
    "Mei",
]
_LAST = [
    "Lopez",
    "Weber",
    "Tanaka",
    "Silva",
    "Haddad",
    "Murphy",
    "Wang",
    "Ivanova",
    "Mensah",
    "Rossi",
    "Patel",
    "Dubois",
    "Novak",
    "Karimi",
    "Smith",
    "Costa",
    "Demir",
    "Sato",
    "Bianchi",
    "Meyer",
    "Nair",
    "Berg",
]
_ITEMS = [
    "blue mugs",
    "desk lamps",
    "wool socks",
    "notebooks",
    "coffee grinders",
    "yoga mats",
    "USB cables",
    "water bottles",
    "rain jackets",
    "tea kettles",
    "phone cases",
    "garden gloves",
    "bike lights",
    "pillow covers",
    "wall clocks",
    "paint brushes",
    "board games",
    "travel mugs",
    "salad bowls",
    "candles",
]
_CITIES = [
    "Lyon",
    "Berlin",
    "Osaka",
    "Porto",
    "Cairo",
    "Dublin",
    "Shenzhen",
    "Riga",
    "Accra",
    "Milan",
    "Pune",
    "Quebec",
    "Prague",
    "Tabriz",
    "Denver",
    "Recife",
    "Izmir",
    "Kyoto",
    "Turin",
    "Bremen",
    "Kochi",
    "Bergen",
]
_TEMPLATES = [
    "Hi, this is {name}. Please send {qty} {item} to {city}.",
    "{name} here - I need {qty} {item} delivered in {city}.",
    "Order for {city}: {qty} {item}, customer {name}.",
    "Could you ship {qty} {item} to {city}? Thanks, {name}",
    "Please deliver {qty} {item} to our office in {city}. Regards, {name}",
    "New order from {name}: {qty} {item}, ship to {city}.",
]


@dataclass(frozen=True)
class Case:
    message: str
    answer: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": self.message}]

    def teacher_answer(self) -> str:
        """What a strong model would answer: the expected JSON, compact, keys in the asked order."""
        return json.dumps(self.answer)


def cases(seed: int, n: int) -> list[Case]:
    """``n`` cases drawn from ``seed``; different seeds give (almost always) different cases."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        answer = {
            "name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
            "qty": rng.randint(2, 60),
            "item": rng.choice(_ITEMS),
            "city": rng.choice(_CITIES),
        }
        out.append(Case(rng.choice(_TEMPLATES).format(**answer), answer))
    return out


def parse_answer(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def expected_from_message(message: str) -> dict[str, Any] | None:
    """Recover the expected answer from the message alone, so a verifier needs nothing but the trajectory."""
    for template in _TEMPLATES:
        fields = _match(template, message)
        if fields is not None:
            try:
                fields["qty"] = int(fields["qty"])
            except ValueError:
                return None
            return {
                "name": fields["name"],
                "qty": fields["qty"],
                "item": fields["item"],
                "city": fields["city"],
            }
    return None


def _match(template: str, message: str) -> dict[str, str] | None:
    import re

    pattern = re.escape(template)
    for key in ("name", "qty", "item", "city"):
        pattern = pattern.replace(re.escape("{" + key + "}"), f"(?P<{key}>.+?)")
    m = re.fullmatch(pattern, message)
    return m.groupdict() if m else None


def check(message: str, completion: str) -> float:
    """1.0 when the completion is exactly the expected order as JSON,
    else the share of fields right (at most 0.5)."""
    expected = expected_from_message(message)
    got = parse_answer(completion)
    if expected is None or got is None:
        return 0.0
    if got == expected:
        return 1.0
    right = sum(1 for k, v in expected.items() if got.get(k) == v)
    return 0.5 * right / len(expected)
