"""Goals people give the planner (`awo plan "ship 3f2a9c1 of payments to production within 2h"`): a small
closed grammar, parsed by hand into a `Goal`. Goal text is untrusted data: it only ever becomes the fields
below, each checked against a narrow pattern; never a shell word, a path or code.

Grammar (EBNF; keywords are case-insensitive, words are separated by spaces, a comma is a word of its own):

    goal      = ship | promote | rollback ;
    ship      = "ship" ref "of" services "to" env { option } ;
    promote   = "promote" ref "of" services "from" env "to" env { option } ;
    rollback  = ( "roll" "back" | "rollback" ) services "in" env [ "to" ref ] ;
    services  = service { ( "," | "and" ) service } ;
    option    = "within" duration            (* finish within this long of planning *)
              | "no-later-than" time         (* finish by this time *)
              | "without" "canary"           (* asks to skip the canary; refused when the policy has one *)
              | "strategy" strategy ;        (* asks for a rollout strategy; never a looser one *)
    ref       = sha | release ;
    sha       = 7 to 40 hex digits ;                       (* 3f2a9c1 *)
    release   = letter or digit, then letters, digits, ".", "_", "-"; at most 64 ;   (* v1.4.2 *)
    service   = name ;   env = name ;
    name      = a DNS label: lower-case letter or digit, then lower-case letters, digits, "-"; at most 63 ;
    duration  = digits ( "s" | "m" | "h" | "d" ) ;          (* 90m, 2h, 1d *)
    time      = ISO 8601 date and time; without a zone it is UTC ;   (* 2026-11-24T16:00Z *)
    strategy  = "canary" | "blue-green" | "rolling" | "full" | "recreate" ;

Each option may be given once. Examples:
    ship 3f2a9c1 of payments to production within 2h
    ship v1.4.2 of payments, checkout to production no-later-than 2026-11-24T16:00Z strategy blue-green
    promote v1.4.2 of payments from staging to production
    roll back payments in production to v1.4.1
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from agents.vocabulary import Strategy
from features.errors import AwoError

GoalAction = Literal["ship", "promote", "rollback"]
MAX_GOAL_CHARS = 500
KEYWORDS = frozenset(
    {"ship", "promote", "roll", "back", "rollback", "of", "to", "from", "in", "and", "within",
     "no-later-than", "without", "canary", "strategy"}
)  # fmt: skip
_SHA = re.compile(r"^[0-9a-f]{7,40}$")
_RELEASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_DURATION = re.compile(r"^(\d{1,6})(s|m|h|d)$")
_TOKEN = re.compile(r",|[^\s,]+")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
STRATEGIES: tuple[str, ...] = get_args(Strategy)


class GoalError(AwoError):
    """A goal off the grammar: the message names the word, its position and what was expected."""


class Goal(BaseModel):
    """A parsed goal. `ref` is a commit sha (lower-case) or a release tag; None for a rollback to the
    previous version."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    action: GoalAction
    ref: str | None = None
    ref_kind: Literal["sha", "release"] | None = None
    services: list[str] = Field(min_length=1)
    environment: str
    source_environment: str | None = Field(default=None, description="promote: where the release runs now")
    within_s: int | None = Field(
        default=None, ge=1, description="finish within this many seconds of planning"
    )
    no_later_than: datetime | None = None
    canary: bool = Field(default=True, description="False when the goal says `without canary`")
    strategy: Strategy | None = None
    text: str = Field(description="the goal as given")

    def deadline(self, now: datetime) -> datetime | None:
        """The earlier of `now + within` and `no-later-than`."""
        times = [t for t in (self.no_later_than,) if t is not None]
        if self.within_s is not None:
            times.append(now + timedelta(seconds=self.within_s))
        return min(times) if times else None

    def describe(self) -> str:
        """The goal in its canonical words (what a plan file shows)."""
        services = ", ".join(self.services)
        if self.action == "rollback":
            return f"roll back {services} in {self.environment}" + (f" to {self.ref}" if self.ref else "")
        head = (
            f"ship {self.ref} of {services} to {self.environment}"
            if self.action == "ship"
            else f"promote {self.ref} of {services} from {self.source_environment} to {self.environment}"
        )
        options = []
        if self.within_s is not None:
            unit = next(u for u in ("d", "h", "m", "s") if self.within_s % _UNIT_S[u] == 0)
            options.append(f"within {self.within_s // _UNIT_S[unit]}{unit}")
        if self.no_later_than is not None:
            options.append(f"no-later-than {self.no_later_than.isoformat()}")
        if not self.canary:
            options.append("without canary")
        if self.strategy is not None:
            options.append(f"strategy {self.strategy}")
        return " ".join([head, *options])


@dataclass(frozen=True)
class _Word:
    text: str
    column: int  # 1-based character position in the goal
    number: int  # 1-based word number


def _shown(text: str) -> str:
    """A word as quoted in an error: repr() so control characters show, cut to 40 characters."""
    return repr(text if len(text) <= 40 else text[:40] + "…")


class _Words:
    def __init__(self, text: str) -> None:
        self.words = [_Word(m.group(), m.start() + 1, i + 1) for i, m in enumerate(_TOKEN.finditer(text))]
        self.at = 0

    def peek(self) -> _Word | None:
        return self.words[self.at] if self.at < len(self.words) else None

    def error(self, expected: str) -> GoalError:
        word = self.peek()
        if word is None:
            last = self.words[-1] if self.words else None
            after = f" after {_shown(last.text)} (word {last.number})" if last else ""
            return GoalError(f"goal ended{after}; expected {expected}")
        return GoalError(
            f"unexpected word {_shown(word.text)} at column {word.column} (word {word.number}); "
            f"expected {expected}"
        )

    def keyword(self, *choices: str) -> str:
        word = self.peek()
        if word is None or word.text.lower() not in choices:
            names = ", ".join(repr(c) for c in choices)
            raise self.error(names if len(choices) == 1 else f"one of {names}")
        self.at += 1
        return word.text.lower()

    def optional(self, keyword: str) -> bool:
        word = self.peek()
        if word is not None and word.text.lower() == keyword:
            self.at += 1
            return True
        return False

    def value(self, pattern: re.Pattern[str], expected: str, lower: bool = False) -> str:
        word = self.peek()
        if word is None:
            raise self.error(expected)
        text = word.text.lower() if lower else word.text
        if word.text.lower() in KEYWORDS or not pattern.match(text):
            raise self.error(expected)
        self.at += 1
        return text


def _ref(words: _Words) -> tuple[str, Literal["sha", "release"]]:
    text = words.value(_RELEASE, "a commit sha (7-40 hex digits) or a release tag such as v1.4.2")
    if _SHA.match(text.lower()):
        return text.lower(), "sha"
    return text, "release"


def _services(words: _Words) -> list[str]:
    expected = "a service name (lower-case letters, digits and '-')"
    services = [words.value(_NAME, expected)]
    while words.optional(",") or words.optional("and"):
        name = words.value(_NAME, expected)
        if name in services:
            raise GoalError(f"service {name!r} is named twice")
        services.append(name)
    return services


def _env(words: _Words) -> str:
    return words.value(_NAME, "an environment name (lower-case letters, digits and '-')")


def _time(words: _Words) -> datetime:
    word = words.peek()
    expected = "an ISO 8601 time such as 2026-11-24T16:00Z"
    if word is None:
        raise words.error(expected)
    try:
        parsed = datetime.fromisoformat(word.text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise words.error(expected) from None
    words.at += 1
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _options(words: _Words, fields: dict[str, object]) -> None:
    seen: set[str] = set()
    options = ("within", "no-later-than", "without", "strategy")
    while words.peek() is not None:
        word = words.peek()
        option = words.keyword(*options)
        if option in seen:
            assert word is not None
            raise GoalError(f"option {option!r} at column {word.column} (word {word.number}) is given twice")
        seen.add(option)
        if option == "within":
            amount = words.value(_DURATION, "a duration such as 90m, 2h or 1d", lower=True)
            match = _DURATION.match(amount)
            assert match is not None
            fields["within_s"] = int(match.group(1)) * _UNIT_S[match.group(2)]
            if fields["within_s"] == 0:
                raise GoalError("'within' needs a duration longer than zero")
        elif option == "no-later-than":
            fields["no_later_than"] = _time(words)
        elif option == "without":
            words.keyword("canary")
            fields["canary"] = False
        else:
            fields["strategy"] = words.keyword(*STRATEGIES)


def parse_goal(text: str) -> Goal:
    """The goal of `text`, or a GoalError naming the first word that does not fit the grammar."""
    if len(text) > MAX_GOAL_CHARS:
        raise GoalError(f"goal is {len(text)} characters long; at most {MAX_GOAL_CHARS}")
    words = _Words(text)
    fields: dict[str, object] = {"text": text.strip()}
    verb = words.keyword("ship", "promote", "roll", "rollback")
    if verb in ("roll", "rollback"):
        if verb == "roll":
            words.keyword("back")
        fields["action"] = "rollback"
        fields["services"] = _services(words)
        words.keyword("in")
        fields["environment"] = _env(words)
        if words.optional("to"):
            fields["ref"], fields["ref_kind"] = _ref(words)
        if words.peek() is not None:
            raise words.error("the end of the goal (a rollback takes no options)")
    else:
        fields["action"] = verb
        fields["ref"], fields["ref_kind"] = _ref(words)
        words.keyword("of")
        fields["services"] = _services(words)
        if verb == "promote":
            words.keyword("from")
            fields["source_environment"] = _env(words)
        words.keyword("to")
        fields["environment"] = _env(words)
        if verb == "promote" and fields["environment"] == fields["source_environment"]:
            raise GoalError(
                f"promote goes from one environment to another, not {fields['environment']!r} to itself"
            )
        _options(words, fields)
    return Goal.model_validate(fields)
