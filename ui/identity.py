"""Who is looking: the viewer's `Actor` (mtl_core.owners) for every page, and the sidebar box
where they name themselves, sign in, or unlock the teacher's rights.

- With Streamlit's OIDC login configured (`[auth]` in .streamlit/secrets.toml) a signed-in
  viewer is their account (owner id "user:<email>"; a teacher when the email is in
  $MTL_TEACHERS).
- Otherwise (or before signing in) each browser has a private identity: a random secret kept in
  a cookie (`mtl_lab_id`, a year, this site only), so a reload or a new tab of the same browser
  is the same person. Runs record only a hash of the secret (`browser_owner_id`), so seeing a
  run's owner never lets anyone act as them. The display name is kept in a second cookie.
- The teacher is whoever types $MTL_TEACHER_KEY in the sidebar (compared in constant time);
  the unlock lasts for the browser session.
"""
from __future__ import annotations

import json
import re
import secrets

import streamlit as st

from mtl_core.owners import (
    Actor,
    account_owner_id,
    browser_owner_id,
    clean_name,
    teacher_emails,
    teacher_key_matches,
    teacher_key_set,
)
from mtl_core.store import RunStore
from ui.text import md_text

ID_COOKIE = "mtl_lab_id"
NAME_COOKIE = "mtl_lab_name"
COOKIE_MAX_AGE_S = 365 * 24 * 3600
_SECRET = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
_SECRET_KEY = "_identity.secret"
_WRITE_KEY = "_identity.write_cookie"  # the cookies this session still has to set
_NAME_KEY = "_identity.name"
_TEACHER_KEY = "_identity.teacher"
NAME_WIDGET = "identity.name"
TEACHER_WIDGET = "identity.teacher_key"


def auth_configured() -> bool:
    """Whether Streamlit's OIDC login is set up (an [auth] section in secrets.toml)."""
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all: not configured
        return False


def _signed_in_email() -> str | None:
    if not auth_configured():
        return None
    try:
        if not st.user.get("is_logged_in"):
            return None
        email = st.user.get("email") or st.user.get("sub")
    except Exception:  # noqa: BLE001 - an older Streamlit without st.user
        return None
    return str(email) if email else None


def _cookie(name: str) -> str | None:
    try:
        value = st.context.cookies.get(name)
    except Exception:  # noqa: BLE001 - no browser (AppTest, bare script run)
        return None
    return value if isinstance(value, str) and value else None  # AppTest gives a mock


def _browser_secret() -> str:
    secret = st.session_state.get(_SECRET_KEY)
    if secret:
        return str(secret)
    secret = _cookie(ID_COOKIE)
    if not secret or not _SECRET.match(secret):
        secret = secrets.token_urlsafe(32)
        st.session_state.setdefault(_WRITE_KEY, {})[ID_COOKIE] = secret
    st.session_state[_SECRET_KEY] = secret
    return secret


def _display_name(owner_id: str) -> str:
    name = st.session_state.get(_NAME_KEY)
    if name is None:
        name = clean_name(_cookie(NAME_COOKIE) or "") or f"guest-{owner_id[-4:]}"
        st.session_state[_NAME_KEY] = name
    return str(name)


def current_actor() -> Actor:
    """The viewer, as mtl_core checks them: the signed-in account, else this browser."""
    teacher = bool(st.session_state.get(_TEACHER_KEY))
    email = _signed_in_email()
    if email is not None:
        name = clean_name(str(st.user.get("name") or email))
        return Actor(account_owner_id(email), name,
                     teacher=teacher or email.strip().lower() in teacher_emails())
    owner_id = browser_owner_id(_browser_secret())
    return Actor(owner_id, _display_name(owner_id), teacher=teacher)


def _set_cookies() -> None:
    """Write the cookies this session still owes the browser (a tiny script: Streamlit can
    read cookies but has no call to set one)."""
    pending = st.session_state.get(_WRITE_KEY) or {}
    if not pending:
        return
    parts = [f"document.cookie = {json.dumps(f'{k}={v}')} + "
             f"'; Max-Age={COOKIE_MAX_AGE_S}; Path=/; SameSite=Strict';"
             for k, v in pending.items()]
    st.html(f"<script>{' '.join(parts)}</script>", unsafe_allow_javascript=True,
            width="content")


def _on_name(store: RunStore, owner_id: str) -> None:
    name = clean_name(st.session_state.get(NAME_WIDGET, "")) or f"guest-{owner_id[-4:]}"
    st.session_state[_NAME_KEY] = name
    st.session_state.setdefault(_WRITE_KEY, {})[NAME_COOKIE] = re.sub(r"[;=,\s]", "_", name)
    store.set_owner_name(owner_id, name)


def _teacher_box(store: RunStore, actor: Actor) -> None:
    from mtl_core.owners import LIMIT_FIELDS

    if not actor.teacher:
        if not teacher_key_set():
            return
        with st.expander("Teacher", icon=":material/school:"):
            key = st.text_input("Teacher key", type="password", key=TEACHER_WIDGET)
            if st.button("Unlock", key="identity.unlock"):
                if teacher_key_matches(key):
                    st.session_state[_TEACHER_KEY] = True
                    st.rerun()
                st.error("That is not the teacher key.")
        return
    with st.expander("Teacher: class limits", icon=":material/school:"):
        st.caption("You can stop, pause, resume, delete or rename any run. 0 = no limit.")
        limits = store.limits().to_dict()
        labels = {"max_active_per_owner": "Runs training at once, per person",
                  "max_queued_per_owner": "Runs waiting in the queue, per person"}
        values = {f: st.number_input(labels[f], min_value=0, max_value=10_000, step=1,
                                     value=int(limits[f]), key=f"identity.{f}")
                  for f in LIMIT_FIELDS}
        if st.button("Save class limits", key="identity.save_limits"):
            try:
                store.set_limits(actor, **{k: int(v) for k, v in values.items()})
                st.toast("Class limits saved.")
            except (PermissionError, ValueError) as exc:
                st.error(str(exc))
        if st.button("Leave teacher mode", key="identity.lock", type="tertiary"):
            st.session_state.pop(_TEACHER_KEY, None)
            st.rerun()


def identity_sidebar(store: RunStore) -> Actor:
    """The sidebar box: who you are (name, sign in/out), the teacher's key and limits."""
    actor = current_actor()
    _set_cookies()
    if _signed_in_email() is not None:
        st.caption(f":material/person: Signed in as **{md_text(actor.name)}**"
                   + (" · teacher" if actor.teacher else ""))
        if st.button("Log out", key="identity.logout", type="tertiary"):
            st.logout()
    else:
        if NAME_WIDGET not in st.session_state:
            st.session_state[NAME_WIDGET] = actor.name
        st.text_input("Your name", key=NAME_WIDGET, max_chars=40,
                      on_change=_on_name, args=(store, actor.id),
                      help="Shown on your runs. Only this browser can stop or delete them.")
        if actor.teacher:
            st.caption(":material/school: Teacher")
        if auth_configured() and st.button("Log in", key="identity.login", type="tertiary"):
            st.login()
    _teacher_box(store, actor)
    return actor
