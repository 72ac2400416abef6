"""The DGRPO_* environment variables dgrpo reads, in one list, and the check that refuses any other.

A misspelled variable is otherwise ignored without a word: `DGRPO_S3_ENDPOINT` (no `_URL`) makes the S3 store fall
back to AWS and send the local store's keys there. Every entry point checks the environment before any request: the
command line (`dgrpo_pipelines.errors.OneLineErrors`) and `dgrpo.store.open_store` (every stage and worker).
A new variable is added here, in the same change that reads it.
"""

import difflib
import os
from collections.abc import Mapping

PREFIX = "DGRPO_"

KNOWN_VARIABLES: dict[str, str] = {
    "DGRPO_S3_ENDPOINT_URL": "S3 API endpoint of a non-AWS store (dgrpo.store.s3.S3Settings)",
    "DGRPO_S3_REGION": "the bucket's region",
    "DGRPO_S3_ADDRESSING_STYLE": "path, virtual or auto",
    "DGRPO_S3_MULTIPART_THRESHOLD_MB": "objects at least this large move in parts",
    "DGRPO_S3_MULTIPART_CHUNK_MB": "part size",
    "DGRPO_S3_MAX_CONCURRENCY": "parts in flight at once",
    "DGRPO_S3_MAX_ATTEMPTS": "tries per request",
    "DGRPO_S3_RETRY_MODE": "botocore's retry mode",
    "DGRPO_S3_CONNECT_TIMEOUT_S": "seconds to open a connection",
    "DGRPO_S3_READ_TIMEOUT_S": "seconds without data on an open connection",
    "DGRPO_S3_REQUEST_DEADLINE_S": "no retry after this long since a request's first attempt",
    "DGRPO_DEBUG": "the command line prints tracebacks (dgrpo_pipelines.errors)",
    "DGRPO_STORE": "the command line's default --store (dgrpo_pipelines.cli)",
    "DGRPO_NOTIFY_WEBHOOK": "URL posted when a fine-tune's chain ends (dgrpo.runtime.notify); from a Secret",
    "DGRPO_CODE_VERSION": "the code version lineage records (dgrpo.runs.lineage.code_version); set in the images",
    "DGRPO_IMAGE": "the image reference lineage records; set in the stage images",
    "DGRPO_IMAGES_FILE": "JSON map stage -> image reference (dgrpo_components.images)",
    "DGRPO_IMAGE_REGISTRY": "registry of the stage images",
    "DGRPO_IMAGE_TAG": "tag of the stage images",
    "DGRPO_MODEL_CACHE": "model cache mount path; set in the images and by kubernetes.model_cache",
    "DGRPO_EXPECT_GPUS": "GPUs a compiled task was given (dgrpo.runtime.gpu_check); set by the pipeline",
}
"""Every DGRPO_* variable the code reads or sets, with what it is for; a test greps the code for names missing
here (tests/test_reliability_inputs.py::test_every_dgrpo_variable_the_code_names_is_known)."""


class UnknownVariableError(ValueError):
    """A DGRPO_* environment variable that no part of dgrpo reads."""


def unknown_variable(name: str) -> str | None:
    """Why `name` is refused (a DGRPO_* name no part of dgrpo reads, with the closest known name), or None."""
    if not name.startswith(PREFIX) or name in KNOWN_VARIABLES:
        return None
    close = difflib.get_close_matches(name, KNOWN_VARIABLES, n=1, cutoff=0.75)
    hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(KNOWN_VARIABLES))}"
    return f"not a variable dgrpo reads ({hint}); an unknown name would be ignored without a word"


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise UnknownVariableError naming the first unknown DGRPO_* variable and the closest known name."""
    environ = os.environ if environ is None else environ
    for name in sorted(environ):
        if (why := unknown_variable(name)) is not None:
            raise UnknownVariableError(f"environment variable {name}: {why}, so correct or unset it")
