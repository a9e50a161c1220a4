"""Where tuning logs live: the shipped ones are package data, read only; `tune` appends to the
user's own copy under the cache folder, and `compile` prefers it once it exists."""

from pathlib import Path


import tvmbits.tuning_logs
from tvmbits.tuning_log import RECORDS, WORKLOADS, default_log, shipped_log, start_user_log, user_log



def test_shipped_log_is_package_data():
    shipped = shipped_log("x86_64")
    assert shipped.parent == Path(tvmbits.tuning_logs.__file__).parent
    assert (shipped / RECORDS).is_file() and (shipped / WORKLOADS).is_file()


def test_tune_appends_to_a_user_copy_never_to_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_log("x86_64") == shipped_log("x86_64")  # no user log yet
    messages = []
    own = start_user_log("x86_64", messages.append)
    assert own == tmp_path / "tvmbits" / "tuning_logs" / "x86_64" == user_log("x86_64")
    assert (own / RECORDS).read_bytes() == (shipped_log("x86_64") / RECORDS).read_bytes()
    assert messages and "from the shipped tuning log" in messages[0]
    (own / RECORDS).write_text("")  # a user's own edits are kept: no second copy
    assert start_user_log("x86_64", messages.append) == own and (own / RECORDS).read_text() == ""
    assert default_log("x86_64") == own
    assert not str(own).startswith(str(Path(tvmbits.tuning_logs.__file__).parent))


def test_profile_without_a_shipped_log_starts_an_empty_user_log(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    own = start_user_log("arm64", lambda message: None)
    assert own == user_log("arm64") and not own.exists()  # created by the first measurement
    assert default_log("arm64") == shipped_log("arm64")
