"""The top of the library: the training plan, the in-process engine, the run report, and the glue between an
orchestrator's artifact files and the stage functions (`component_io`)."""
