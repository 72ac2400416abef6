"""The contract between stages: versioned table schemas (`tables`) and the stage table (`stages`)."""

from dgrpo.contracts.tables import (
    CONTRACT_KEY,
    CONTRACTS,
    EVAL_SAMPLES,
    REWARDS,
    ROLLOUTS,
    SAMPLE_KEY_COLUMNS,
    SCORES,
    UPDATE_METRICS,
    VERSION_KEY,
    Contract,
    ContractError,
    check_metadata,
    check_sample_keys,
    check_unique_ids,
    describe,
    from_parquet_bytes,
    to_parquet_bytes,
    validate,
)

__all__ = ["CONTRACTS", "CONTRACT_KEY", "EVAL_SAMPLES", "REWARDS", "ROLLOUTS", "SAMPLE_KEY_COLUMNS", "SCORES",
           "UPDATE_METRICS", "VERSION_KEY", "Contract", "ContractError", "check_metadata", "check_sample_keys",
           "check_unique_ids", "describe", "from_parquet_bytes",
           "to_parquet_bytes", "validate"]
