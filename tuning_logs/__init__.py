"""The tuning logs shipped with tvmbits, one MetaSchedule database folder per target profile
(`tuning_logs/<profile>/`), installed as package data of `tvmbits.tuning_logs` and read by
`tvmbits compile` by default (`tvmbits/tuning_log.py`). Never written at run time: `tvmbits
tune` appends to a per-user copy."""
