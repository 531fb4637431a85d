"""write_submission: Kaggle's layout, refusal of malformed frames, and atomic writes that never lose a file; and local
scoring with score_submission and its command line, tools/score.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import REPO_DIR, run_as_a_script
from mnist_helpers import check_submission, score_submission, write_submission


def _submission(n=5, labels=None):
    labels = np.arange(n) % 10 if labels is None else labels
    return pd.DataFrame({"ImageId": np.arange(1, n + 1), "Label": labels})


def test_writes_header_and_ids_from_one(tmp_path):
    path = write_submission(_submission(12), tmp_path / "out" / "submission.csv", expected_rows=12)
    lines = path.read_text().splitlines()
    assert lines[0] == "ImageId,Label" and lines[1] == "1,0" and lines[12] == "12,1" and len(lines) == 13
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]  # no temporary file left


@pytest.mark.parametrize("frame, expected_rows, words", [
    (_submission(5), 6, "5 rows, expected 6"),
    (_submission(0), None, "no rows"),
    (_submission(3).rename(columns={"Label": "label"}), None, "columns"),
    (_submission(3)[["Label", "ImageId"]], None, "columns"),
    (_submission(3).assign(ImageId=[0, 1, 2]), None, "row 1: ImageId is 0, expected 1"),
    (_submission(3).assign(ImageId=[1, 3, 2]), None, "row 2: ImageId is 3, expected 2"),
    (_submission(3, labels=[1, 10, 2]), None, "row 2: Label is 10"),
    (_submission(3, labels=[-1, 0, 2]), None, "row 1: Label is -1"),
    (_submission(3, labels=[1.0, 2.0, 3.5]), None, "must hold integers"),
])
def test_malformed_submission_is_refused_and_the_old_file_kept(tmp_path, frame, expected_rows, words):
    path = tmp_path / "submission.csv"
    path.write_text("ImageId,Label\n1,7\n")
    with pytest.raises(ValueError, match=words) as error:
        write_submission(frame, path, expected_rows=expected_rows)
    assert "\n" not in str(error.value)
    assert path.read_text() == "ImageId,Label\n1,7\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_a_failure_while_writing_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "submission.csv"
    path.write_text("ImageId,Label\n1,7\n")

    def half_write_then_fail(self, file, **kwargs):
        file.write("ImageId,Label\n1,")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_submission(_submission(3), path)
    assert path.read_text() == "ImageId,Label\n1,7\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_check_submission_accepts_a_good_frame_of_the_expected_size_only():
    assert check_submission(_submission(28000), expected_rows=28000) is None
    with pytest.raises(ValueError, match="28000 rows, expected 27999"):
        check_submission(_submission(28000), expected_rows=27999)


FIVE_LABELS = "ImageId,Label\n1,3\n2,1\n3,4\n4,1\n5,5\n"


@pytest.mark.parametrize("labels", [
    np.array([3, 1, 4, 1, 5]),                              # what predict() returns: (N,) int64
    np.array([3, 1, 4, 1, 5], dtype=np.int32),
    np.array([3, 1, 4, 1, 5], dtype=np.uint8),
    [3, 1, 4, 1, 5],
    (3, 1, 4, 1, 5),
    pd.Series([3, 1, 4, 1, 5], index=[10, 11, 12, 13, 14]),  # its own index is ignored: ids run 1..N
    pd.Series([3, 1, 4, 1, 5], dtype="Int64"),              # nullable, but nothing missing
    _submission(5, labels=[3, 1, 4, 1, 5]),                 # the ImageId,Label frame, as before
], ids=["int64", "int32", "uint8", "list", "tuple", "series", "Int64", "frame"])
def test_write_submission_takes_1d_labels_or_the_frame(tmp_path, labels):
    path = write_submission(labels, tmp_path / "submission.csv", expected_rows=5)
    assert path.read_text() == FIVE_LABELS


@pytest.mark.parametrize("labels, words", [
    (np.zeros((5, 10)), "got shape (5, 10) (for probabilities, pass proba.argmax(axis=1))"),
    (np.array([[3, 1, 4, 1, 5]]), "got shape (1, 5)"),
    (np.array([0.1, 0.9, 0.5, 0.2, 0.3]), "got float64 values (labels are integers 0-9"),
    ([3.0, 1.0, 4.0, 1.0, 5.0], "got float64 values"),
    (np.array([True, False, True, True, False]), "got bool values"),
    (np.array(["3", "1", "4", "1", "5"]), "got <U1 values"),
    (pd.Series([3, None, 4, 1, 5], dtype="Int64"), "submission row 2: Label is missing; every row needs one."),
    (_submission(5).astype({"Label": "Int64"}).assign(Label=pd.array([1, 2, None, 4, 5], dtype="Int64")),
     "submission row 3: Label is missing"),
    ({"ImageId": [1], "Label": [3]}, "got dict."),
    ("31415", "got str."),
    (None, "got NoneType."),
    (np.int64(3), "got int64."),
], ids=["probabilities", "2-D", "floats", "float list", "bools", "strings", "Int64 missing", "frame missing", "dict",
        "str", "None", "scalar"])
def test_write_submission_refuses_anything_else_in_one_line_and_keeps_the_old_file(tmp_path, labels, words):
    path = tmp_path / "submission.csv"
    path.write_bytes(FIVE_LABELS.encode())
    with pytest.raises(ValueError) as error:
        write_submission(labels, path, expected_rows=5)
    message = str(error.value)
    assert words in message and "\n" not in message, message
    assert path.read_bytes() == FIVE_LABELS.encode()
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


# --- score_submission: local scoring against test_labels.csv ------------------------------


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def labels_csv(tmp_path):
    return _write(tmp_path / "test_labels.csv", "ImageId,Label\n1,7\n2,2\n3,1\n4,0\n")


def test_score_prints_and_returns_the_accuracy(tmp_path, labels_csv, capsys):
    submission = _write(tmp_path / "submission.csv", "ImageId,Label\n1,7\n2,2\n3,3\n4,0\n")
    assert score_submission(submission, labels_csv) == 0.75
    assert capsys.readouterr().out == f"{submission}: accuracy 0.75000 (3 of 4 correct) against {labels_csv}\n"


@pytest.mark.parametrize("text, words", [
    ("ImageId,Label\n1,7\n2,2\n3,1\n", "submission has 3 rows, expected 4"),
    ("Id,Label\n1,7\n2,2\n3,1\n4,0\n", "submission columns are ['Id', 'Label']"),
    ("ImageId,Label\n0,7\n1,2\n2,1\n3,0\n", "row 1: ImageId is 0, expected 1"),
    ("ImageId,Label\n1,7\n2,12\n3,1\n4,0\n", "row 2: Label is 12, expected a digit 0-9"),
    ("ImageId,Label\n1,7\n2,2.5\n3,1\n4,0\n", "column 'Label' must hold integers"),
    ("ImageId,Label\n1,7\n2,\n3,1\n4,0\n", "column 'Label' must hold integers"),
    ("", "is not a readable CSV"),
    ("ImageId,Label\n1,7,9\n\x00\x00\n", "submission has 2 rows, expected 4"),
])
def test_score_validates_like_kaggle_with_one_line_naming_the_file(tmp_path, labels_csv, text, words):
    submission = _write(tmp_path / "submission.csv", text)
    with pytest.raises(ValueError) as error:
        score_submission(submission, labels_csv)
    message = str(error.value)
    assert message.startswith(f"{submission}: ") and words in message and "\n" not in message


def test_score_from_the_command_line_refuses_a_bad_submission_in_one_line(tmp_path, labels_csv, capsys):
    submission = _write(tmp_path / "submission.csv", "ImageId,Label\n1,7\n2,12\n3,1\n4,0\n")
    assert run_as_a_script(REPO_DIR / "tools" / "score.py", str(submission), str(labels_csv)) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err == f"error: {submission}: submission row 2: Label is 12, expected a digit 0-9.\n"


def test_score_from_the_command_line(tmp_path, labels_csv, capsys):
    submission = _write(tmp_path / "submission.csv", "ImageId,Label\n1,7\n2,2\n3,1\n4,0\n")
    assert run_as_a_script(REPO_DIR / "tools" / "score.py", str(submission), str(labels_csv)) == 0
    assert capsys.readouterr().out.strip() == f"{submission}: accuracy 1.00000 (4 of 4 correct) against {labels_csv}"
