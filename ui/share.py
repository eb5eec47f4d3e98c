"""A config as a short, URL-safe token, for links that open the Train page with every widget set.

A token is the JSON of only the fields that differ from the defaults, zlib-compressed (with a
preset dictionary of config words when that is shorter) and base64url-encoded without padding.
"The defaults" are those a fresh form has for the config's suite, architecture and method:
`ExperimentConfig()` with that suite's trunk preset (a cnn for image suites, as the form sets
it) and each plugin's default params; the task list is left out when it is every task of the
suite at weight 1 (parse_config fills exactly that in). A default config encodes to a
14-character token, a typical lesson config to about 100. `decode_config(encode_config(cfg))
== cfg` always: `encode_config` checks the round trip and falls back to the whole document if
a delta ever would not rebuild it.

Pure: no streamlit; the page glue lives in ui.train_run.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from typing import Any
from urllib.parse import urlencode, urlsplit

from mtl_core.config import ConfigError, ExperimentConfig, FieldError, parse_config, safe_json
from ui.config_form import TRUNK_PRESETS, task_names

CFG_PARAM = "cfg"  # ?cfg=<token>
MODE_PARAM = "mode"  # ?mode=class
CLASS_MODE = "class"
MAX_TOKEN_CHARS = 20_000  # a browser URL stays well under this; longer is not ours
MAX_JSON_BYTES = 1_000_000  # a token never inflates past this (no zip bombs)
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
# A preset zlib dictionary of what deltas are made of (about halves a token). FROZEN: a token
# made with it names it by its Adler-32 checksum in the zlib header, so editing it breaks every
# link shared so far; to improve it, add a second dictionary and pick by that checksum.
_ZDICT = "".join([
    '"gradients":"representation","pref_vector":[','"task_kind":"regression","classification",',
    '"binary"{"data":{"params":{"correlation":,"download":false,"inputs":[',
    '"n_samples":,"n_test":,"n_train":,"noise":,"path":"targets":["kinds":{},',
    '"suite":"synthetic_mmoe","synthetic_tabular","toy_2d","multi_mnist","mnist_attributes",',
    '"mnist_fashion","csv","train_fraction":0.,"val_fraction":0.},"device":"cpu",',
    '"log_every":,"model":{"architecture":"single_task","cross_stitch","mmoe","mtan",',
    '"heads":{"activation":"tanh","dropout":0.,"layers":[],"per_task":{"},',
    '"params":{"shared_layers":"n_experts":},"trunk":{"activation":"relu","batch_norm":true,',
    '"dropout":0.,"hidden":[],"layers":[64,32,16],"type":"cnn","mlp"}},"name":"",',
    '"optim":{"batch_size":,"early_stopping":{"min_delta":0.,"patience":},"epochs":,',
    '"eval_every":,"lr":0.0,"optimizer":"sgd","adamw","rmsprop","weight_decay":0.},"seed":,',
    '"tasks":[{"name":"","weight":1.0},{"name":"","weight":0.},"weighting":{"method":',
    '"uncertainty","gradnorm","pcgrad","upgrad","params":{"alpha":}}}',
]).encode()
_SAME = object()  # "no difference" in a delta
_NAME_PATHS = (("data", "suite"), ("model", "architecture"), ("weighting", "method"))


def _plugin_defaults(registry: Any, name: str) -> dict[str, Any]:
    if name not in registry:
        return {}  # parse_config names the unknown plugin
    try:
        return registry.get(name).params().model_dump(mode="json")
    except Exception:  # a params model with required fields has no defaults to compare to
        return {}


def defaults_for(suite: str, architecture: str, method: str) -> dict[str, Any]:
    """The config document a fresh form shows for this suite, architecture and method."""
    from mtl_core.data import SUITES
    from mtl_core.models import ARCHITECTURES
    from mtl_core.weighting import METHODS

    doc = ExperimentConfig().to_dict()
    doc["data"]["suite"] = suite
    doc["data"]["params"] = _plugin_defaults(SUITES, suite)
    doc["model"]["architecture"] = architecture
    doc["model"]["params"] = _plugin_defaults(ARCHITECTURES, architecture)
    doc["weighting"]["method"] = method
    doc["weighting"]["params"] = _plugin_defaults(METHODS, method)
    kind = SUITES.get(suite).extra.get("input_kind", "vector") if suite in SUITES else "vector"
    doc["model"]["trunk"].update(TRUNK_PRESETS.get(kind, TRUNK_PRESETS["vector"]))
    return doc


def _diff(value: Any, base: Any) -> Any:
    """What of `value` differs from `base`: nested dicts recursively, anything else whole
    (an int is not the same as an equal float: the type must survive the trip too)."""
    if isinstance(value, dict) and isinstance(base, dict):
        out = {}
        for key, item in value.items():
            if key not in base:
                out[key] = item
                continue
            diff = _diff(item, base[key])
            if diff is not _SAME:
                out[key] = diff
        return out if out else _SAME
    return _SAME if type(value) is type(base) and value == base else value


def _merge(base: Any, delta: Any) -> Any:
    if isinstance(base, dict) and isinstance(delta, dict):
        out = dict(base)
        for key, item in delta.items():
            out[key] = _merge(base[key], item) if key in base else item
        return out
    return delta


def _names(doc: dict[str, Any]) -> tuple[str, str, str]:
    """(suite, architecture, method) of a document; a fresh config's where not given."""
    default = ExperimentConfig().to_dict()
    names = []
    for section, key in _NAME_PATHS:
        part = doc.get(section)
        name = part.get(key) if isinstance(part, dict) else None
        # A name that is not a string stays in the document for parse_config to report.
        names.append(name if isinstance(name, str) else default[section][key])
    return names[0], names[1], names[2]


def config_delta(cfg: ExperimentConfig) -> dict[str, Any]:
    """The fields of a validated config that differ from the form's defaults."""
    doc = cfg.to_dict()
    all_tasks = [{"name": n, "weight": 1.0}
                 for n in task_names(cfg.data.suite, cfg.data.params)]
    if doc["tasks"] == all_tasks:
        doc["tasks"] = None  # parse_config fills in exactly these
    names = _names(doc)
    delta = _diff(doc, defaults_for(*names))
    delta = {} if delta is _SAME else delta
    # The plugin names choose the defaults the rest is compared to: keep those that differ
    # from a fresh config's, so the decoder compares to the same defaults.
    for (section, key), name, fresh in zip(_NAME_PATHS, names, _names({}), strict=True):
        if name != fresh:
            delta.setdefault(section, {})[key] = name
    return delta


def config_from_delta(delta: dict[str, Any]) -> ExperimentConfig:
    """The config a delta describes (validated as a browser's: untrusted; ConfigError says
    what is wrong)."""
    return parse_config(_merge(defaults_for(*_names(delta)), delta), trusted=False)


def _pack(document: dict[str, Any]) -> str:
    """Compact JSON, deflated with the preset dictionary or without (whichever is shorter:
    the dictionary's id costs 4 bytes, more than a tiny delta saves), base64url unpadded."""
    raw = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    with_dict = zlib.compressobj(9, zdict=_ZDICT)
    packed = min(zlib.compress(raw, 9), with_dict.compress(raw) + with_dict.flush(), key=len)
    return base64.urlsafe_b64encode(packed).decode().rstrip("=")


def encode_config(cfg: ExperimentConfig) -> str:
    """A URL-safe token for a validated config (see the module doc)."""
    delta = config_delta(cfg)
    try:
        if config_from_delta(delta) == cfg:
            return _pack(delta)
    except ConfigError:
        pass
    return _pack(cfg.to_dict())  # never lose a field: the whole document instead


def _damaged(why: str) -> ConfigError:
    return ConfigError([FieldError(CFG_PARAM, f"the shared config in this link is damaged or "
                                              f"incomplete ({why}); ask for the link again")])


def unpack_token(token: str) -> dict[str, Any]:
    """The JSON document a token holds (a delta, or a whole config); ConfigError if damaged."""
    token = token.strip()
    if not token:
        raise _damaged("it is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise _damaged(f"it is longer than {MAX_TOKEN_CHARS:,} characters")
    if not _TOKEN.fullmatch(token):
        raise _damaged("it has characters a share token never has")
    try:
        inflate = zlib.decompressobj(zdict=_ZDICT)  # used only if the header asks for it
        raw = inflate.decompress(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)),
                                 MAX_JSON_BYTES)
    except (binascii.Error, ValueError, zlib.error):
        raise _damaged("it does not unpack") from None
    if inflate.unconsumed_tail:
        raise _damaged("it unpacks to far more than a config")
    if not inflate.eof:
        raise _damaged("it is cut short")
    try:
        document = safe_json(raw, "the shared config in this link")  # size and depth first
    except ValueError as exc:  # ConfigError (too big, too deep), bad JSON, not UTF-8
        if isinstance(exc, ConfigError):
            raise
        raise _damaged("it does not hold a config") from None
    if not isinstance(document, dict):
        raise _damaged("it does not hold a mapping of fields")
    return document


def decode_config(token: str) -> ExperimentConfig:
    """The config of a token made by `encode_config`; ConfigError for a damaged token, or one
    whose config is not valid here (e.g. a suite this installation does not have)."""
    return config_from_delta(unpack_token(token))


def is_default(cfg: ExperimentConfig) -> bool:
    """Whether the config is the fresh form's (its link needs no ?cfg= at all)."""
    return config_delta(cfg) == {}


def share_query(cfg: ExperimentConfig, class_mode: bool = False) -> dict[str, str]:
    """The query parameters of a link to this config (and class mode, if asked)."""
    query = {} if is_default(cfg) else {CFG_PARAM: encode_config(cfg)}
    if class_mode:
        query[MODE_PARAM] = CLASS_MODE
    return query


def share_url(base: str, cfg: ExperimentConfig, class_mode: bool = False) -> str:
    """`base` (the app's address, without a query) with the config's query string."""
    base = base.split("?", 1)[0].split("#", 1)[0]
    if urlsplit(base).netloc and not urlsplit(base).path:
        base += "/"  # http://host:8501 -> http://host:8501/
    query = urlencode(share_query(cfg, class_mode))
    return f"{base}?{query}" if query else base
