"""No secret in a config: a run's config travels in the pipeline spec, the KFP API's run records, the store and
every lineage record, so a credential written into it would leak everywhere at once.

`check_no_secrets` refuses a config holding, anywhere, a value that looks like a credential (a known key format: AWS,
Hugging Face, GitHub, OpenAI, Slack, Google, a private key, a JSON web token; a password in a URI; a high-entropy
token), and a key of a free-form mapping (`kubernetes.*.env`, plug-in options, ...) whose name says it holds one
(HF_TOKEN, PGPASSWORD, AWS_SECRET_ACCESS_KEY, api_key; WANDB_KEY when its value looks like a key). The way to give a
stage a secret is a Kubernetes Secret exposed as environment variables: `kubernetes.defaults.secrets` or
`kubernetes.stages.<stage>.secrets`.

The config legitimately holds sha256 digests (prompt files, image references `...@sha256:<hex>`) and git
revisions: hexadecimal strings are never taken for tokens by their entropy alone.
"""

import dataclasses
import math
import re
from collections import Counter
from typing import Any

from dgrpo.config.deployment import SecretEnv
from dgrpo.config.fields import ConfigError

_SECRET_VALUES = (
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    ("a GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b")),
    ("a Slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a JSON web token", re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+")),
    ("an OpenAI or Anthropic API key", re.compile(r"\bsk-(?:proj-|ant-|svcacct-)?[A-Za-z0-9_-]{20,}")),
    ("a Stripe secret key", re.compile(r"\b[sr]k_live_[A-Za-z0-9]{16,}")),
    ("a Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    # user:password@ after a scheme; `host:8080/path@v1` is a port, not a password
    ("a password in a URI", re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:(?!\d*(?:/|@))[^@\s]+@")),
)
_SECRET_WORDS = {"SECRET", "SECRETS", "PASSWORD", "PASSWD", "PASSPHRASE", "TOKEN", "APIKEY", "CREDENTIAL",
                 "CREDENTIALS", "AUTHORIZATION"}
_SECRET_SUFFIXES = ("PASSWORD", "PASSWD", "PASSPHRASE", "SECRET", "TOKEN", "APIKEY")
"""A word ending in one of these is a secret too: PGPASSWORD, CLIENTSECRET, GHTOKEN (TOKENIZERS does not end so)."""
_KEY_WORDS = {"KEY", "KEYS", "PWD", "PASS", "AUTH"}
"""A name ending in one of these (WANDB_KEY, OPENAI_KEY, MYSQL_PWD) holds a secret when its value looks like one; a
column or dictionary key (`prompt_key: caption`) does not."""
_TOKEN_RUN = re.compile(r"[A-Za-z0-9+/=]{20,}")
_PATH = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|/|~|\.{1,2}/)")
"""A path or URI: its '/' separates names rather than joining the characters of one base64 token."""
_HEX = re.compile(r"[0-9a-fA-F]+")
_SECRET_PAIRS = {("ACCESS", "KEY"), ("API", "KEY"), ("PRIVATE", "KEY"), ("SECRET", "KEY"), ("AUTH", "KEY")}
_LOCATION_WORDS = {"FILE", "PATH", "DIR", "NAME", "ARN"}
"""A name ending in one of these says where a secret is (a mounted file, a Secret's name), not what it is."""

SECRET_ADVICE = ("put it in a Kubernetes Secret and expose it to the stages with kubernetes.defaults.secrets (or "
                 "kubernetes.stages.<stage>.secrets): [{secret: <Secret name>, env: {<key>: <VARIABLE>}}]")


def secret_name(name: str, value: Any = None) -> bool:
    """Whether an environment variable or option name says it holds a credential (HF_TOKEN, PGPASSWORD, api_key),
    by its underscore-separated words, so TOKENIZERS_PARALLELISM or AWS_SHARED_CREDENTIALS_FILE are not. A name
    ending in KEY or PWD (WANDB_KEY) counts when `value` looks like a key: one word of 16+ characters with a digit."""
    words = [w for w in re.split(r"[_\-.]+", name.upper()) if w]
    if not words or words[-1] in _LOCATION_WORDS:
        return False
    pairs = zip(words, words[1:], strict=False)
    if _SECRET_WORDS & set(words) or any(pair in _SECRET_PAIRS for pair in pairs):
        return True
    if any(w.endswith(_SECRET_SUFFIXES) for w in words):
        return True
    return words[-1] in _KEY_WORDS and _key_like(value)


def _key_like(value: Any) -> bool:
    return (isinstance(value, str) and len(value.strip()) >= 16 and not any(c.isspace() for c in value.strip())
            and any(c.isdigit() for c in value) and any(c.isalpha() for c in value))


def _entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _high_entropy(run: str) -> bool:
    """A random mixed-case token (an AWS secret key, an API token), told apart from identifiers that share its
    alphabet (SD3Transformer2DModel, paths): both cases and digits, and the character class changing at about
    every other character (a random base62 string: 62%; CamelCase: about 30%). Hexadecimal is never flagged by
    entropy: it is how digests and git revisions are written."""
    if _HEX.fullmatch(run):
        return False
    n = len(run)
    upper, lower = sum(c.isupper() for c in run), sum(c.islower() for c in run)
    digits = sum(c.isdigit() for c in run)
    if upper < 0.15 * n or lower < 0.15 * n or digits < 1:
        return False
    kinds = ["u" if c.isupper() else "l" if c.islower() else "d" if c.isdigit() else "o" for c in run]
    changes = sum(a != b for a, b in zip(kinds, kinds[1:], strict=False)) / (n - 1)
    return changes >= 0.4 and _entropy(run) >= 3.5


def secret_value(text: str) -> str | None:
    """What kind of credential `text` looks like, or None."""
    for what, pattern in _SECRET_VALUES:
        if pattern.search(text):
            return what
    pieces = text.split("/") if _PATH.match(text) else [text]  # mktemp's tmp.EHkRC5EcwJ is a name, not a key
    if any(_high_entropy(run) for piece in pieces for run in _TOKEN_RUN.findall(piece)):
        return "a high-entropy token (an access key or API token)"
    return None


def check_no_secrets(config: Any) -> None:
    """Raise ConfigError naming the first field of `config` (a RunConfig) that holds or names a secret."""
    _walk(config, "", names_matter=False)


def _walk(value: Any, path: str, names_matter: bool) -> None:
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            child = getattr(value, f.name)
            here = f"{path}.{f.name}" if path else f.name
            # the keys of every free-form mapping (env, options, node selectors...) are names a person chose and
            # say what they hold; a SecretEnv's keys are the keys of a Kubernetes Secret, the right place for one
            _walk(child, here, names_matter=not isinstance(value, SecretEnv))
    elif isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}"
            named = names_matter and isinstance(key, str) and item not in (None, "")
            if named and secret_name(key):  # HF_TOKEN, PGPASSWORD: whatever the value
                raise ConfigError(_named(here))
            _walk(item, here, names_matter=isinstance(item, dict) and names_matter)
            if named and secret_name(key, item):  # WANDB_KEY: a key-like value under a KEY name
                raise ConfigError(_named(here))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", names_matter=False)
    elif isinstance(value, str) and (what := secret_value(value)) is not None:
        raise ConfigError(f"config field '{path}': looks like {what}, and a config is stored with every run and "
                          f"sent to the KFP API; {SECRET_ADVICE}")


def _named(path: str) -> str:
    return (f"config field '{path}': its name says it holds a secret, and a config is stored with every run and sent "
            f"to the KFP API; {SECRET_ADVICE}")
