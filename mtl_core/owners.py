"""Who may change a run: owners, the teacher and the local operator; class-wide quotas.

Every run has an owner id. The CLI and anything run by the machine's own user act as the
local operator (`OPERATOR`, owner id "operator"), who may act on every run; runs created before
owners existed belong to the operator. A browser acts as an `Actor` built by the pages (the
signed-in OIDC account, else a private per-browser identity whose id is a hash of a secret the
browser keeps, so that seeing an owner id never lets anyone act as that owner).

Everyone may look at every run; only the owner, the teacher or the operator may stop, pause,
resume, delete or rename one (`require`, called inside mtl_core.jobs and mtl_core.store, not
only by the pages hiding buttons). The teacher is whoever presents `$MTL_TEACHER_KEY` or signs
in with an email listed in `$MTL_TEACHERS`.

Quotas (`Limits`) apply per owner to browser users: how many runs of one owner may be active
(running or paused) at once, and how many may wait in the queue. Defaults come from
`$MTL_MAX_ACTIVE_PER_OWNER` and `$MTL_MAX_QUEUED_PER_OWNER` (0 = no limit); the teacher may
change them for the whole class at run time (stored in <runs_dir>/limits.json).
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

OPERATOR_ID = "operator"
DEFAULT_MAX_ACTIVE_PER_OWNER = 0  # no per-owner cap beyond MTL_MAX_JOBS: the queue is fair
DEFAULT_MAX_QUEUED_PER_OWNER = 25  # a lesson's one-click run of all presets fits
MAX_NAME_CHARS = 40
ACTIONS = ("stop", "pause", "resume", "delete", "rename")


@dataclass(frozen=True)
class Actor:
    """Who asks: `id` is the owner id recorded on the runs it creates."""

    id: str
    name: str = ""
    teacher: bool = False

    @property
    def is_operator(self) -> bool:
        return self.id == OPERATOR_ID

    @property
    def privileged(self) -> bool:
        """May act on every run and is exempt from quotas."""
        return self.teacher or self.is_operator

    @property
    def label(self) -> str:
        return self.name or self.id


OPERATOR = Actor(OPERATOR_ID, "operator")


def may_act(actor: Actor, owner: str) -> bool:
    return actor.privileged or actor.id == owner


def require(actor: Actor, run_id: str, owner: str, owner_name: str | None, action: str) -> None:
    """PermissionError unless `actor` may `action` the run owned by `owner`."""
    if may_act(actor, owner):
        return
    raise PermissionError(
        f"only the run's owner ({owner_name or owner}) or the teacher can {action} run "
        f"{run_id!r}; you are {actor.label}")


def browser_owner_id(secret: str) -> str:
    """The owner id of a browser identity: a hash of its secret, never the secret itself."""
    return "b-" + hashlib.sha256(("mtl-lab-browser:" + secret).encode()).hexdigest()[:24]


def account_owner_id(email: str) -> str:
    """The owner id of a signed-in (OIDC) account."""
    return "user:" + email.strip().lower()


def clean_name(text: str) -> str:
    """A display name: printable, single-line, at most MAX_NAME_CHARS characters."""
    kept = "".join(ch for ch in str(text) if ch.isprintable()).strip()
    return kept[:MAX_NAME_CHARS]


def teacher_key_matches(key: str | None) -> bool:
    """Whether `key` is the operator's $MTL_TEACHER_KEY (constant-time; False when unset)."""
    expected = os.environ.get("MTL_TEACHER_KEY", "")
    if not expected or not key:
        return False
    return hmac.compare_digest(key.encode(), expected.encode())


def teacher_key_set() -> bool:
    return bool(os.environ.get("MTL_TEACHER_KEY", ""))


def teacher_emails() -> set[str]:
    """$MTL_TEACHERS: comma-separated emails of OIDC accounts that are teachers."""
    raw = os.environ.get("MTL_TEACHERS", "")
    return {e.strip().lower() for e in raw.split(",") if e.strip()}


# --- quotas ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """Per-owner quotas; 0 means no limit."""

    max_active_per_owner: int = DEFAULT_MAX_ACTIVE_PER_OWNER
    max_queued_per_owner: int = DEFAULT_MAX_QUEUED_PER_OWNER

    def to_dict(self) -> dict[str, int]:
        return {"max_active_per_owner": self.max_active_per_owner,
                "max_queued_per_owner": self.max_queued_per_owner}


LIMIT_FIELDS = ("max_active_per_owner", "max_queued_per_owner")
MAX_LIMIT = 10_000


def check_limit(field: str, value: object) -> int:
    """A quota value as an int in 0..MAX_LIMIT; ValueError naming the field otherwise."""
    if field not in LIMIT_FIELDS:
        raise ValueError(f"unknown limit {field!r}; use one of: {', '.join(LIMIT_FIELDS)}")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise ValueError(f"{field} must be a whole number from 0 (no limit) to {MAX_LIMIT} "
                         f"(got {value!r})")
    return value


def env_limits() -> Limits:
    """The operator's defaults: $MTL_MAX_ACTIVE_PER_OWNER, $MTL_MAX_QUEUED_PER_OWNER."""
    values = {}
    for field, env in (("max_active_per_owner", "MTL_MAX_ACTIVE_PER_OWNER"),
                       ("max_queued_per_owner", "MTL_MAX_QUEUED_PER_OWNER")):
        text = os.environ.get(env, "").strip()
        if not text:
            continue
        try:
            values[field] = check_limit(field, int(text))
        except ValueError as exc:
            raise ValueError(f"{env} must be a whole number from 0 (no limit) to "
                             f"{MAX_LIMIT} (got {text!r})") from exc
    return Limits(**values)


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st ..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
