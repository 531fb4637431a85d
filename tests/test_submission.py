"""write_submission: Kaggle's layout, refusal of malformed frames, and atomic writes that never lose a file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mnist_helpers import check_submission, write_submission


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


def test_check_submission_accepts_a_good_frame():
    check_submission(_submission(28000), expected_rows=28000)
