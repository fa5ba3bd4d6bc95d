"""The `Execution` options object and the checks behind it, without starting any worker.

Worker limits are checked on a machine of two cores (`cpu_count` replaced), so the numbers
in the messages are exact wherever the suite runs.
"""
import dataclasses
import multiprocessing
from types import SimpleNamespace

import numpy as np
import pytest

from engine.run import _execution
from engine.run._execution import (DEFAULT_BACKEND, DISPATCH_MODES, MAX_WORKERS_PER_CORE, Execution,
                               check_backend, check_positive_int, in_daemonic_process,
                               resolve_workers)

CORES = 2


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(_execution, "cpu_count", lambda: CORES)


# --- the defaults and the object ---------------------------------------------------------------

def test_the_documented_defaults():
    e = Execution()
    assert (e.workers, e.backend, e.scheduler, e.chunks_per_worker, e.chunk_size, e.retries,
            e.progress, e.dispatch) == (None, "loky", None, None, None, 2, False, "auto")
    assert DEFAULT_BACKEND == "loky" and MAX_WORKERS_PER_CORE == 4
    assert DISPATCH_MODES == ("auto", "parallel", "in-process")


def test_an_execution_is_frozen():
    e = Execution(workers=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.workers = 3
    assert e.workers == 2


def test_every_valid_field_is_kept_as_given(two_cores):
    e = Execution(workers=3, backend="dask", scheduler="tcp://127.0.0.1:8786", chunks_per_worker=1,
                  chunk_size=5, retries=0, progress=np.True_, dispatch="in-process")
    assert (e.workers, e.backend, e.scheduler, e.chunks_per_worker, e.chunk_size, e.retries,
            e.progress, e.dispatch) == (3, "dask", "tcp://127.0.0.1:8786", 1, 5, 0, np.True_,
                                        "in-process")
    assert Execution(dispatch="parallel", progress=True).dispatch == "parallel"


@pytest.mark.parametrize("workers, n", [(None, CORES), (-1, CORES), (1, 1), (3, 3),
                                        (np.int64(8), 8)], ids=["None", "-1", "1", "3", "int64-8"])
def test_n_workers_resolves_all_cores_and_keeps_a_count(two_cores, workers, n):
    got = Execution(workers=workers).n_workers
    assert got == n and type(got) is int


# --- resolve_workers ---------------------------------------------------------------------------

@pytest.mark.parametrize("workers, n", [(None, CORES), (-1, CORES), (np.int64(-1), CORES), (1, 1),
                                        (np.int32(3), 3), (MAX_WORKERS_PER_CORE * CORES, 8)],
                         ids=["None", "-1", "int64--1", "1", "int32-3", "limit"])
def test_resolve_workers(two_cores, workers, n):
    got = resolve_workers(workers)
    assert got == n and type(got) is int


def test_all_cores_are_the_machines(monkeypatch):
    monkeypatch.setattr(_execution, "cpu_count", lambda: 13)
    assert resolve_workers(None) == 13 and resolve_workers(-1) == 13


@pytest.mark.parametrize("workers, match", [
    (0, "`workers` == 0 has no meaning: use a positive int, or -1/None for all cores"),
    (-2, r"`workers` must be a positive int, -1 or None, got -2$"),
    (-1.0, r"`workers` must be a positive int, -1 or None, got -1\.0$"),
    (1.5, r"`workers` must be a positive int, -1 or None, got 1\.5$"),
    (2.0, r"`workers` must be a positive int, -1 or None, got 2\.0$"),
    ("2", r"`workers` must be a positive int, -1 or None, got '2'$"),
    (True, r"`workers` must be a positive int, -1 or None, got True$"),
], ids=["0", "-2", "-1.0", "1.5", "2.0", "str", "True"])
def test_resolve_workers_refuses_naming_the_value(two_cores, workers, match):
    with pytest.raises(ValueError, match=match):
        resolve_workers(workers)


def test_more_than_four_workers_per_core_are_refused_on_a_local_backend(two_cores):
    assert resolve_workers(8, "threading") == 8
    for backend in ("loky", "threading", "multiprocessing"):
        with pytest.raises(ValueError, match=r"^`workers`=9 is more than 4 per core on this machine "
                                             r"\(2 cores, at most 8\); .*backend='dask'"):
            resolve_workers(9, backend)
    with pytest.raises(ValueError, match=r"`workers`=9 is more than 4 per core"):
        Execution(workers=9)


def test_a_dask_cluster_may_have_more_workers_than_this_machine(two_cores):
    assert resolve_workers(9, "dask") == 9
    assert Execution(workers=100, backend="dask").n_workers == 100


# --- check_backend -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["loky", "threading", "dask", "multiprocessing"])
def test_builtin_and_joblib_backends_are_accepted(backend):
    assert check_backend(backend) == backend
    assert Execution(backend=backend).backend == backend


def test_a_backend_registered_with_joblib_is_accepted(monkeypatch):
    from joblib.parallel import BACKENDS

    monkeypatch.setitem(BACKENDS, "my-cluster", object)
    assert check_backend("my-cluster") == "my-cluster"


@pytest.mark.parametrize("backend", ["fast", "", None, 3], ids=["fast", "empty", "None", "int"])
def test_an_unknown_backend_is_refused_listing_the_choices(backend):
    with pytest.raises(ValueError, match=r"`backend` must be one of \[.*'dask'.*'loky'.*"
                                         rf"'threading'.*\], got {backend!r}$"):
        check_backend(backend)
    with pytest.raises(ValueError, match=rf"`backend` must be one of .*, got {backend!r}$"):
        Execution(workers=2, backend=backend)


# --- check_positive_int ------------------------------------------------------------------------

@pytest.mark.parametrize("value, zero_allowed, expected", [
    (1, False, 1), (7, False, 7), (np.int64(2), False, 2), (0, True, 0), (1, True, 1),
    (np.uint8(0), True, 0),
], ids=["1", "7", "int64", "0-allowed", "1-allowed", "uint8-0-allowed"])
def test_check_positive_int_returns_a_plain_int(value, zero_allowed, expected):
    got = check_positive_int("n", value, zero_allowed=zero_allowed)
    assert got == expected and type(got) is int


@pytest.mark.parametrize("value, zero_allowed, message", [
    (0, False, "`n` must be a positive int, got 0"),
    (-1, False, "`n` must be a positive int, got -1"),
    (-1, True, "`n` must be a non-negative int, got -1"),
    (2.0, False, "`n` must be a positive int, got 2.0"),
    (0.0, True, "`n` must be a non-negative int, got 0.0"),
    (True, False, "`n` must be a positive int, got True"),
    (False, True, "`n` must be a non-negative int, got False"),
    ("3", True, "`n` must be a non-negative int, got '3'"),
], ids=["0", "-1", "-1-allowed", "2.0", "0.0-allowed", "True", "False-allowed", "str"])
def test_check_positive_int_refuses_naming_the_value(value, zero_allowed, message):
    with pytest.raises(ValueError) as caught:
        check_positive_int("n", value, zero_allowed=zero_allowed)
    assert str(caught.value) == message


def test_zero_is_refused_unless_allowed():
    with pytest.raises(ValueError, match="`n` must be a positive int, got 0"):
        check_positive_int("n", 0)


# --- each field of Execution -------------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    ({"workers": 0}, "`workers` == 0 has no meaning"),
    ({"workers": "all"}, "`workers` must be a positive int, -1 or None, got 'all'"),
    ({"scheduler": "tcp://127.0.0.1:8786"},
     "`scheduler` is only used with backend='dask', got backend='loky'"),
    ({"scheduler": "tcp://127.0.0.1:8786", "backend": "threading"},
     "`scheduler` is only used with backend='dask', got backend='threading'"),
    ({"scheduler": 8786, "backend": "dask"}, "`scheduler` must be an address string, got 8786"),
    ({"chunks_per_worker": 0}, "`chunks_per_worker` must be a positive int, got 0"),
    ({"chunks_per_worker": 1.5}, "`chunks_per_worker` must be a positive int, got 1.5"),
    ({"chunk_size": 0}, "`chunk_size` must be a positive int, got 0"),
    ({"chunk_size": -3}, "`chunk_size` must be a positive int, got -3"),
    ({"retries": -1}, "`retries` must be a non-negative int, got -1"),
    ({"retries": None}, "`retries` must be a non-negative int, got None"),
    ({"progress": "yes"}, "`progress` must be True or False, got 'yes'"),
    ({"progress": 1}, "`progress` must be True or False, got 1"),
    ({"dispatch": "fast"},
     "`dispatch` must be one of ('auto', 'parallel', 'in-process'), got 'fast'"),
], ids=["workers-0", "workers-str", "scheduler-loky", "scheduler-threading", "scheduler-int",
        "chunks_per_worker-0", "chunks_per_worker-float", "chunk_size-0", "chunk_size-negative",
        "retries-negative", "retries-None", "progress-str", "progress-int", "dispatch"])
def test_a_bad_field_is_refused_naming_it(fields, message):
    with pytest.raises(ValueError) as caught:
        Execution(**fields)
    assert str(caught.value).startswith(message)


# --- from_options ------------------------------------------------------------------------------

def test_from_options_without_a_base_starts_from_the_defaults():
    assert Execution.from_options() == Execution()
    assert Execution.from_options(None, workers=2, retries=0) == Execution(workers=2, retries=0)


def test_from_options_replaces_only_the_given_fields_of_the_base():
    base = Execution(workers=2, backend="threading", chunk_size=3)
    assert Execution.from_options(base) is base
    got = Execution.from_options(base, retries=0)
    assert got == Execution(workers=2, backend="threading", chunk_size=3, retries=0)
    assert base.retries == 2   # the base is not changed


def test_from_options_checks_the_replaced_values():
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int, got 0"):
        Execution.from_options(Execution(workers=2), chunk_size=0)


def test_from_options_refuses_an_unknown_keyword_listing_the_options():
    with pytest.raises(TypeError) as caught:
        Execution.from_options(workers=2, wrkers=3, cores=1)
    names = sorted(f.name for f in dataclasses.fields(Execution))
    assert str(caught.value) == f"unknown execution option(s) ['cores', 'wrkers']; the options are {names}"


@pytest.mark.parametrize("base", [{"workers": 2}, 2, "loky"], ids=["dict", "int", "str"])
def test_from_options_refuses_a_base_that_is_not_an_execution(base):
    with pytest.raises(TypeError) as caught:
        Execution.from_options(base)
    assert str(caught.value) == f"`execution` must be an engine.Execution, got {type(base).__name__}"


# --- in_daemonic_process -----------------------------------------------------------------------

def test_in_daemonic_process_is_a_bool(monkeypatch):
    assert in_daemonic_process() is False   # pytest's own process
    monkeypatch.setattr(multiprocessing, "current_process", lambda: SimpleNamespace(daemon=1))
    assert in_daemonic_process() is True
