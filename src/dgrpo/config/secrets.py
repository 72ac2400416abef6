"""No secret in a config: a run's config travels in the pipeline spec, the KFP API's run records, the store and
every lineage record, so a credential written into it would leak everywhere at once.

`check_no_secrets` refuses a config holding a value that looks like a credential (an AWS key id, a Hugging Face or
GitHub token, a private key, a password in a URI), and an environment entry or option whose name says it is one
(HF_TOKEN, AWS_SECRET_ACCESS_KEY, api_key...). The way to give a stage a secret is a Kubernetes Secret exposed as
environment variables: `kubernetes.defaults.secrets` or `kubernetes.stages.<stage>.secrets`.
"""

import dataclasses
import re
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
    ("a password in a URI", re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:[^@\s]+@")),
)
_SECRET_WORDS = {"SECRET", "SECRETS", "PASSWORD", "PASSWD", "PASSPHRASE", "TOKEN", "APIKEY", "CREDENTIAL",
                 "CREDENTIALS"}
_SECRET_PAIRS = {("ACCESS", "KEY"), ("API", "KEY"), ("PRIVATE", "KEY"), ("SECRET", "KEY"), ("AUTH", "KEY")}
_LOCATION_WORDS = {"FILE", "PATH", "DIR", "NAME", "ARN"}
"""A name ending in one of these says where a secret is (a mounted file, a Secret's name), not what it is."""

NAMED_MAPPINGS = ("env", "options", "embedder_options")
"""Config fields whose keys are names a person chose: kubernetes.*.env, reward.options, cluster.embedder_options."""
SECRET_ADVICE = ("put it in a Kubernetes Secret and expose it to the stages with kubernetes.defaults.secrets (or "
                 "kubernetes.stages.<stage>.secrets): [{secret: <Secret name>, env: {<key>: <VARIABLE>}}]")


def secret_name(name: str) -> bool:
    """Whether an environment variable or option name says it holds a credential (HF_TOKEN, api_key), by its
    underscore-separated words, so TOKENIZERS_PARALLELISM or AWS_SHARED_CREDENTIALS_FILE are not."""
    words = [w for w in re.split(r"[_\-.]+", name.upper()) if w]
    if not words or words[-1] in _LOCATION_WORDS:
        return False
    pairs = zip(words, words[1:], strict=False)
    return bool(_SECRET_WORDS & set(words)) or any(pair in _SECRET_PAIRS for pair in pairs)


def secret_value(text: str) -> str | None:
    """What kind of credential `text` looks like, or None."""
    for what, pattern in _SECRET_VALUES:
        if pattern.search(text):
            return what
    return None


def check_no_secrets(config: Any) -> None:
    """Raise ConfigError naming the first field of `config` (a RunConfig) that holds or names a secret."""
    _walk(config, "", names_matter=False)


def _walk(value: Any, path: str, names_matter: bool) -> None:
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            child = getattr(value, f.name)
            here = f"{path}.{f.name}" if path else f.name
            # the keys of env and free-form option mappings name what they hold; a SecretEnv's keys are the keys
            # of a Kubernetes Secret, the right place for one
            _walk(child, here, names_matter=f.name in NAMED_MAPPINGS and not isinstance(value, SecretEnv))
    elif isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}"
            if names_matter and isinstance(key, str) and secret_name(key) and item not in (None, ""):
                raise ConfigError(f"config field '{here}': its name says it holds a secret, and a config is "
                                  f"stored with every run and sent to the KFP API; {SECRET_ADVICE}")
            _walk(item, here, names_matter=isinstance(item, dict) and names_matter)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", names_matter=False)
    elif isinstance(value, str) and (what := secret_value(value)) is not None:
        raise ConfigError(f"config field '{path}': looks like {what}, and a config is stored with every run and "
                          f"sent to the KFP API; {SECRET_ADVICE}")
