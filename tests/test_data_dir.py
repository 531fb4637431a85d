"""find_data_dir / search_data_dir: the search order, gzipped copies, and one clear message when nothing is found."""

from __future__ import annotations

import numpy as np
import pytest

import mnist_helpers
from conftest import make_digits, write_test_csv, write_train_csv
from mnist_helpers import find_data_dir, load_test_csv, load_train_csv, search_data_dir


def _make_data(folder, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    X, y = make_digits(10)
    write_train_csv(folder / f"train.csv{suffix}", X, y)
    write_test_csv(folder / f"test.csv{suffix}", X)
    return folder


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Point the Kaggle root, ../input and ./data into tmp_path, all empty, and clear $DATA_DIR."""
    kaggle, work, project = tmp_path / "kaggle", tmp_path / "working", tmp_path / "project"
    work.mkdir()
    monkeypatch.setattr(mnist_helpers, "KAGGLE_ROOT", kaggle)
    monkeypatch.setattr(mnist_helpers, "PROJECT_DIR", project)
    monkeypatch.chdir(work)
    monkeypatch.delenv("DATA_DIR", raising=False)
    return {"kaggle": kaggle / "input" / "digit-recognizer",
            "competitions": kaggle / "input" / "competitions" / "digit-recognizer",
            "input": tmp_path / "input" / "digit-recognizer", "data": project / "data"}


def test_search_order_is_kaggle_then_input_then_data(places):
    _make_data(places["data"])
    assert find_data_dir() == places["data"]
    _make_data(places["input"])
    assert find_data_dir() == places["input"]
    _make_data(places["competitions"])
    assert find_data_dir() == places["competitions"]
    _make_data(places["kaggle"])
    assert find_data_dir() == places["kaggle"]


def test_kaggles_newer_competitions_folder_is_found(places):
    _make_data(places["competitions"])  # /kaggle/input/competitions/digit-recognizer
    assert find_data_dir() == places["competitions"]


def test_data_attached_under_another_name_is_found_below_kaggle_input(places, tmp_path):
    kaggle_input = tmp_path / "kaggle" / "input"
    (kaggle_input / "aaa-other-dataset" / "images").mkdir(parents=True)  # searched first, holds nothing
    _make_data(kaggle_input / "datasets" / "someone" / "mnist-as-csv" / "csv", gz=True)
    assert find_data_dir() == kaggle_input / "datasets" / "someone" / "mnist-as-csv" / "csv"


def test_the_search_below_kaggle_input_is_bounded(places, tmp_path):
    kaggle_input = tmp_path / "kaggle" / "input"
    deep = _make_data(kaggle_input / "a" / "b" / "c" / "d" / "e")  # five levels down: past SEARCH_MAX_DEPTH
    with pytest.raises(FileNotFoundError, match=f"every folder under {kaggle_input}"):
        find_data_dir()
    assert search_data_dir(kaggle_input, max_depth=5) == deep
    assert search_data_dir(kaggle_input, max_depth=5, max_folders=4) is None  # input, a, b, c: then it stops


def test_an_explicit_dir_is_not_searched_around(places, tmp_path):
    _make_data(tmp_path / "kaggle" / "input" / "some-dataset")
    with pytest.raises(FileNotFoundError) as error:
        find_data_dir(tmp_path / "empty")
    assert "every folder under" not in str(error.value)


def test_explicit_dir_wins_then_environment(places, tmp_path, monkeypatch):
    _make_data(places["kaggle"])
    mine, theirs = _make_data(tmp_path / "mine"), _make_data(tmp_path / "env")
    monkeypatch.setenv("DATA_DIR", str(theirs))
    assert find_data_dir() == theirs
    assert find_data_dir(mine) == mine
    assert find_data_dir(str(mine)) == mine


def test_explicit_dir_without_data_does_not_fall_back(places, tmp_path):
    _make_data(places["kaggle"])
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        find_data_dir(tmp_path / "nowhere")


def test_folder_needs_both_files(places):
    places["data"].mkdir(parents=True)
    X, y = make_digits(5)
    write_train_csv(places["data"] / "train.csv", X, y)
    with pytest.raises(FileNotFoundError):
        find_data_dir()


def test_nothing_found_lists_the_places_and_the_command(places):
    with pytest.raises(FileNotFoundError) as error:
        find_data_dir()
    message = str(error.value)
    for place in places.values():
        assert str(place) in message
    assert "get them with `make data`" in message and "kaggle competitions download -c digit-recognizer" in message
    assert "Add Input > digit-recognizer" in message
    assert "point DATA_DIR at the folder that holds them" in message
    assert "\n" not in message


def test_gzipped_data_is_found_and_loaded_by_the_plain_name_and_a_plain_csv_preferred(places):
    folder = _make_data(places["data"], gz=True)
    assert find_data_dir() == folder
    X, y = make_digits(10)
    np.testing.assert_array_equal(load_train_csv(folder / "train.csv")[1], y)  # train.csv.gz, as only it is there
    np.testing.assert_array_equal(load_test_csv(folder / "test.csv"), X)
    X_plain, y_plain = make_digits(7, seed=5)
    write_train_csv(folder / "train.csv", X_plain, y_plain)
    np.testing.assert_array_equal(load_train_csv(folder / "train.csv")[0], X_plain)  # both there: the plain one
    assert find_data_dir() == folder
