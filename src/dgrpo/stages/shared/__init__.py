"""What the stages share: the run context and events (`context`), what a round is (`rounds`), prompt shards
(`shards`), loading the policy with a round's adapter (`policy_io`), AdamW's state and the EMA between rounds
(`training_state`), and the Parquet boundary to a swapped-in stage (`exchange`). A fine-tune's records (commits,
events, evaluations) live in `dgrpo.runs`."""
