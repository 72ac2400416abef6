"""Secrets out of stored error text: a plug-in's exception may quote a token, a password or a signed URL, and an
error stored in the run's records is read by everyone with the store (`dgrpo status`, the report, the exit task).

It uses the config's secret check (`dgrpo.config.secrets`), so what a config may not hold an error may not keep:
a URI's userinfo and signatures (`dgrpo.store.redact`), the value after a name that says it holds a secret
(`PGPASSWORD=...`, `api_key: ...`), and every word that looks like a credential (a known key format or a
high-entropy token). Text still holding one after that (a private key block spread over words) is withheld whole.
"""

import re

from dgrpo.config.secrets import secret_name, secret_value
from dgrpo.store import redact

MASK = "***"
_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z_][\w.-]*)(?P<sep>['\"]?\s*[=:]\s*['\"]?)(?P<value>[^\s'\",;)\]}]+)")
_WORD = re.compile(r"[^\s'\"`,;()\[\]{}<>]+")


def redact_secrets(text: str) -> str:
    """`text` with every secret it seems to hold replaced by ***."""
    text = redact(text)

    def named(m: re.Match) -> str:
        if m["value"] != MASK and secret_name(m["name"], m["value"]):
            return f"{m['name']}{m['sep']}{MASK}"
        return m[0]

    text = _ASSIGNMENT.sub(named, text)
    text = _WORD.sub(lambda m: MASK if secret_value(m[0]) else m[0], text)
    if (what := secret_value(text)) is not None:
        return f"(the error text is withheld: it holds {what})"
    return text
