"""tools/get_data.py (`make data`): MNIST through pooch from mirrors (local HTTP servers on 127.0.0.1, never the
internet), the Kaggle CLI (a fake), and the command lines of tools/get_data.py and tools/score.py."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import re
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pooch
import pytest

import get_data
from conftest import REPO_DIR, make_digits, run_as_a_script, write_test_csv, write_train_csv
from get_data import (
    KAGGLE_COMMAND,
    KAGGLE_TRAIN_ROWS,
    MNIST_FILES,
    MNIST_MIRRORS,
    download_data,
    download_from_kaggle,
    fetch_mnist_file,
    kaggle_credentials_found,
    mnist_mirrors,
    mnist_to_kaggle_layout,
    read_idx,
)
from mnist_helpers import load_test_csv, load_train_csv


def idx_bytes(array: np.ndarray) -> bytes:
    """A gzipped IDX file of uint8 data: magic 0 0 8 ndim, big-endian sizes, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


@pytest.fixture(scope="module")
def mnist_files() -> dict[str, bytes]:
    """Small stand-ins for the four MNIST files: 60 'train' and 40 't10k' images."""
    rng = np.random.default_rng(0)
    files = {}
    for part, n in (("train", 60), ("t10k", 40)):
        files[f"{part}-images-idx3-ubyte.gz"] = idx_bytes(rng.integers(0, 256, (n, 28, 28)))
        files[f"{part}-labels-idx1-ubyte.gz"] = idx_bytes(np.arange(n) % 10)
    return files


@pytest.fixture(scope="module")
def checksums(mnist_files) -> dict[str, str]:
    return {name: hashlib.md5(data).hexdigest() for name, data in mnist_files.items()}


class Mirror:
    """A local HTTP server that serves given bytes under /good/, corrupted ones under /bad/, and counts requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # http.server names it so
                mirror.requests.append(self.path)
                folder, _, name = self.path.strip("/").partition("/")
                if name not in mirror.files or folder not in ("good", "bad"):
                    self.send_error(404)
                    return
                data = mirror.files[name]
                data = data[:-10] + b"corrupted!" if folder == "bad" else data
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # Polled every 20 ms: close() waits for a poll, and the default half second would add up over the tests.
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(mnist_files):
    server = Mirror(mnist_files)
    yield server
    server.close()


EXPECTED_FILES = sorted(["sample_submission.csv", "test.csv", "test_labels.csv", "train.csv",
                         *(f"mnist/{part}-{kind}-idx{dims}-ubyte.gz" for part in ("train", "t10k")
                           for kind, dims in (("images", 3), ("labels", 1)))])


def every_file(folder: Path) -> list[str]:
    """The files below folder, at any depth and under any name (hidden and temporary ones too), sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def corrupted_md5(data: bytes) -> str:
    """The MD5 of what a /bad/ folder serves for data."""
    return hashlib.md5(data[:-10] + b"corrupted!").hexdigest()


def download(data_dir, mirrors, checksums):
    return download_data(data_dir, use_kaggle=False, mirrors=mirrors, files=checksums, train_rows=70,
                         show_progress=False)


def test_mnist_download_builds_the_competition_layout_and_test_labels(tmp_path, mirror, checksums, mnist_files, capsys):
    data_dir = download(tmp_path / "data", [mirror.url + "/good/"], checksums)
    X, y = load_train_csv(data_dir / "train.csv")
    X_test = load_test_csv(data_dir / "test.csv")
    assert X.shape == (70, 784) and X_test.shape == (30, 784)
    sample = pd.read_csv(data_dir / "sample_submission.csv")
    labels = pd.read_csv(data_dir / "test_labels.csv")
    assert list(sample.columns) == list(labels.columns) == ["ImageId", "Label"]
    assert sample["ImageId"].tolist() == labels["ImageId"].tolist() == list(range(1, 31))
    assert (sample["Label"] == 0).all()
    # Every image keeps its own label: rebuild the 100 (image, label) pairs and compare as sets.
    images = np.concatenate([read_idx(data_dir / "mnist" / f"{p}-images-idx3-ubyte.gz") for p in ("train", "t10k")])
    truth = np.concatenate([read_idx(data_dir / "mnist" / f"{p}-labels-idx1-ubyte.gz") for p in ("train", "t10k")])
    original = {(img.tobytes(), int(label)) for img, label in zip(images.reshape(100, 784), truth)}
    rebuilt = {(img.tobytes(), int(label)) for img, label in zip(np.vstack([X, X_test]),
                                                                 np.concatenate([y, labels["Label"]]))}
    assert rebuilt == original
    out = capsys.readouterr().out
    assert "This is MNIST in Kaggle's layout" in out
    assert out.rstrip().endswith("python tools/score.py output/submission.csv data/test_labels.csv")
    assert every_file(data_dir) == EXPECTED_FILES  # nothing else: no temporary file of pooch's or ours


def test_the_shipped_mnist_table_has_four_files_with_md5s_and_https_mirrors():
    assert sorted(MNIST_FILES) == sorted(f"{part}-{kind}-idx{dims}-ubyte.gz" for part in ("train", "t10k")
                                         for kind, dims in (("images", 3), ("labels", 1)))
    assert all(re.fullmatch(r"[0-9a-f]{32}", md5) for md5 in MNIST_FILES.values())
    assert len(set(MNIST_FILES.values())) == 4
    assert len(MNIST_MIRRORS) >= 2 and all(url.startswith("https://") and url.endswith("/") for url in MNIST_MIRRORS)
    assert KAGGLE_TRAIN_ROWS == 42_000  # and 70,000 - 42,000 = 28,000 test rows, as the competition has


def test_the_split_is_seeded_shuffled_and_changes_with_the_seed(tmp_path, mnist_files):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, data in mnist_files.items():
        (raw / name).write_bytes(data)

    def train_labels(name: str, seed: int) -> np.ndarray:
        mnist_to_kaggle_layout(raw, tmp_path / name, train_rows=70, seed=seed)
        return load_train_csv(tmp_path / name / "train.csv")[1]

    first, again, other = train_labels("a", 0), train_labels("b", 0), train_labels("c", 1)
    assert np.array_equal(first, again)  # the same seed, the same split
    assert not np.array_equal(first, other)  # another seed, another split
    in_file_order = np.concatenate([np.arange(60) % 10, np.arange(10) % 10])  # train's labels, then t10k's first 10
    assert not np.array_equal(first, in_file_order)  # shuffled, not MNIST's own order cut at row 70
    X, _ = load_train_csv(tmp_path / "a" / "train.csv")
    test_images = read_idx(raw / "t10k-images-idx3-ubyte.gz").reshape(40, 784)
    assert any((X == image).all(axis=1).any() for image in test_images)  # MNIST's test images are mixed in


def test_a_bad_checksum_on_the_first_mirror_falls_through_to_a_good_file_on_the_next(tmp_path, mirror, checksums):
    data_dir = download(tmp_path / "data", [mirror.url + "/bad/", mirror.url + "/good/"], checksums)
    assert [path.split("/")[1] for path in mirror.requests] == ["bad", "good"] * 4
    for name, md5 in checksums.items():
        assert hashlib.md5((data_dir / "mnist" / name).read_bytes()).hexdigest() == md5
    assert every_file(data_dir) == EXPECTED_FILES


def test_a_mirror_that_is_down_falls_through_to_the_next(tmp_path, mirror, checksums):
    down = "http://127.0.0.1:9/"  # the discard port: nothing listens, so the connection is refused
    data_dir = download(tmp_path / "data", [down, mirror.url + "/missing/", mirror.url + "/good/"], checksums)
    assert (data_dir / "train.csv").is_file()
    assert sum(path.startswith("/missing/") for path in mirror.requests) == 4  # a 404 for each file, then the next


@pytest.fixture
def other_mirror(mnist_files):
    server = Mirror(mnist_files)
    yield server
    server.close()


def test_a_file_corrupted_on_every_mirror_gives_one_error_naming_each_and_leaves_nothing_behind(
        tmp_path, mirror, other_mirror, checksums, mnist_files):
    data_dir, name = tmp_path / "data", "train-images-idx3-ubyte.gz"  # the first file: the download stops there
    mirrors = [mirror.url + "/bad/", other_mirror.url + "/bad/"]
    with pytest.raises(RuntimeError) as error:
        download(data_dir, mirrors, checksums)
    message = str(error.value)
    reasons = "; ".join(rf"{re.escape(url)}: MD5 hash of downloaded file \({re.escape(name)}\) does not match the "
                        rf"known hash: expected md5:{checksums[name]} but got {corrupted_md5(mnist_files[name])}\.[^;]*"
                        for url in mirrors)
    assert re.fullmatch(rf"could not download {re.escape(name)} from any mirror \({reasons}\); check the network, or "
                        rf"get the competition's CSVs with `{re.escape(KAGGLE_COMMAND)}`\.", message), message
    assert "\n" not in message
    assert mirror.requests == other_mirror.requests == [f"/bad/{name}"]  # each mirror tried once
    assert every_file(data_dir) == []  # no partial file under any name, not even pooch's temporary one


def test_a_second_run_downloads_nothing(tmp_path, mirror, checksums, capsys):
    data_dir = download(tmp_path / "data", [mirror.url + "/good/"], checksums)
    assert len(mirror.requests) == 4
    before = {p: p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file()}
    download(data_dir, [mirror.url + "/good/"], checksums)
    assert len(mirror.requests) == 4 and "already there" in capsys.readouterr().out
    (data_dir / "train.csv").unlink()  # the CSVs are rebuilt from the kept MNIST files, still without a download
    download(data_dir, [mirror.url + "/good/"], checksums)
    assert len(mirror.requests) == 4 and (data_dir / "train.csv").is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if p.parent.name == "mnist")


def test_a_damaged_kept_file_is_fetched_again(tmp_path, mirror, checksums):
    data_dir = download(tmp_path / "data", [mirror.url + "/good/"], checksums)
    for name in ("train.csv", "test.csv"):
        (data_dir / name).unlink()
    damaged = data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(b"truncated")
    download(data_dir, [mirror.url + "/good/"], checksums)
    assert mirror.requests[-1] == "/good/t10k-labels-idx1-ubyte.gz" and len(mirror.requests) == 5
    assert hashlib.md5(damaged.read_bytes()).hexdigest() == checksums[damaged.name]
    assert every_file(data_dir) == EXPECTED_FILES


def test_fetch_keeps_a_good_file_without_a_request_and_returns_its_path(tmp_path, mirror, checksums, mnist_files):
    name = "t10k-labels-idx1-ubyte.gz"
    (tmp_path / name).write_bytes(mnist_files[name])
    kept = fetch_mnist_file(name, checksums[name], tmp_path, [mirror.url + "/good/"], show_progress=False)
    assert kept == tmp_path / name and mirror.requests == []


def test_read_idx_refuses_what_is_not_idx(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big")))
    with pytest.raises(ValueError, match="is not a uint8 IDX file"):
        read_idx(path)


def test_conversion_refuses_an_impossible_split(tmp_path, mnist_files):
    for name, data in mnist_files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match="cannot make 100 train rows"):
        mnist_to_kaggle_layout(tmp_path, tmp_path / "out", train_rows=100)


# --- The Kaggle CLI, replaced by a small script --------------------------------------------


def fake_kaggle(tmp_path: Path, body: str) -> str:
    """A `kaggle` executable that runs the given Python body with sys.argv as the CLI would get it."""
    script = tmp_path / "kaggle"
    script.write_text(f"#!{sys.executable}\nimport sys, zipfile, pathlib\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


@pytest.fixture
def competition_zip(tmp_path) -> Path:
    X, y = make_digits(30)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", make_digits(10, seed=1)[0])
    pd.DataFrame({"ImageId": range(1, 11), "Label": 0}).to_csv(tmp_path / "sample_submission.csv", index=False)
    archive = tmp_path / "digit-recognizer.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("train.csv", "test.csv", "sample_submission.csv"):
            zf.write(tmp_path / name, name)
    return archive


def test_kaggle_download_unzips_the_competition_files(tmp_path, competition_zip):
    kaggle = fake_kaggle(tmp_path, f"""
args = sys.argv[1:]
assert args[:4] == ["competitions", "download", "-c", "digit-recognizer"], args
folder = pathlib.Path(args[args.index("-p") + 1])
folder.joinpath("digit-recognizer.zip").write_bytes(pathlib.Path({str(competition_zip)!r}).read_bytes())
""")
    data_dir = download_data(tmp_path / "data", use_kaggle=True, kaggle=kaggle)
    assert sorted(p.name for p in data_dir.iterdir()) == ["sample_submission.csv", "test.csv", "train.csv"]
    assert load_train_csv(data_dir / "train.csv")[0].shape == (30, 784)


@pytest.mark.parametrize("output, expected", [
    ("403 - Forbidden - You must accept this competition's rules before you'll be able to download files.",
     "Kaggle refused the download (403): accept the competition's rules at "
     "https://www.kaggle.com/competitions/digit-recognizer/rules while signed in, then run `make data` again."),
    ("403 Client Error: Forbidden for url: https://www.kaggle.com/api/v1/competitions/data/download-all/x",
     "Kaggle refused the download (403)"),
    ("401 Client Error: Unauthorized for url: https://www.kaggle.com/api/v1/x",
     "Kaggle rejected the credentials (401)"),
    ("Traceback (most recent call last):\n  ...\nOSError: something else", "failed: OSError: something else"),
])
def test_kaggle_errors_are_relayed_in_one_line(tmp_path, output, expected):
    kaggle = fake_kaggle(tmp_path, f"print({output!r}); sys.exit(1)")
    with pytest.raises(RuntimeError) as error:
        download_from_kaggle(tmp_path / "data", kaggle=kaggle)
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert not [p for p in (tmp_path / "data").rglob("*")]  # the scratch folder is gone


def test_a_missing_kaggle_cli_is_explained(tmp_path):
    with pytest.raises(RuntimeError, match="is not installed; `make venv` installs it"):
        download_from_kaggle(tmp_path, kaggle=str(tmp_path / "no-such-kaggle"))


def test_credentials_are_found_in_the_environment_or_kaggle_json(tmp_path, monkeypatch):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    assert not kaggle_credentials_found()
    (tmp_path / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert kaggle_credentials_found()
    (tmp_path / "kaggle.json").unlink()
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert kaggle_credentials_found()


def test_make_data_runs_the_download_command():
    dry_run = subprocess.run(["make", "-n", "data"], cwd=REPO_DIR, capture_output=True, text=True, check=True).stdout
    assert "tools/get_data.py --data-dir data" in dry_run


def test_the_score_command_reports_errors_in_one_line(tmp_path, capsys):
    score = REPO_DIR / "tools" / "score.py"
    assert run_as_a_script(score, str(tmp_path / "sub.csv"), str(tmp_path / "labels.csv")) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {tmp_path / 'labels.csv'}: no such file."]


def test_the_get_data_command_reports_a_failed_download_in_one_line(tmp_path, monkeypatch, capsys, pooch_log_level):
    down = "http://127.0.0.1:9/"  # nothing listens there
    monkeypatch.setenv("MNIST_MIRRORS", down)
    assert run_as_a_script(REPO_DIR / "tools" / "get_data.py", "--data-dir", str(tmp_path / "data"), "--mnist") == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    lines = printed.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: could not download train-images-idx3-ubyte.gz from any "
                                                   f"mirror ({down}: "), printed.err
    assert lines[0].endswith(f"; check the network, or get the competition's CSVs with `{KAGGLE_COMMAND}`.")
    assert every_file(tmp_path) == []


@pytest.fixture
def pooch_log_level():
    """main() quiets pooch's logger, for good in this process: put its level back afterwards."""
    logger = pooch.get_logger()
    level = logger.level
    yield
    logger.setLevel(level)


def test_the_get_data_command_builds_the_csvs_from_the_mirrors(tmp_path, mirror, checksums, monkeypatch, capsys,
                                                               pooch_log_level):
    monkeypatch.setattr(get_data, "MNIST_FILES", checksums)  # the small stand-ins' checksums, not MNIST's
    monkeypatch.setenv("MNIST_MIRRORS", f"{mirror.url}/good/")
    assert get_data.main(["--data-dir", str(tmp_path / "data"), "--mnist"]) == 0
    assert every_file(tmp_path / "data") == EXPECTED_FILES and len(mirror.requests) == 4
    assert "python tools/score.py" in capsys.readouterr().out
    assert get_data.main(["--data-dir", str(tmp_path / "data"), "--mnist"]) == 0  # a second run: nothing to do
    assert len(mirror.requests) == 4 and "nothing to download" in capsys.readouterr().out


def test_mnist_mirrors_can_be_replaced_through_the_environment(tmp_path, mirror, checksums, monkeypatch):
    monkeypatch.delenv("MNIST_MIRRORS", raising=False)
    assert mnist_mirrors() == MNIST_MIRRORS
    monkeypatch.setenv("MNIST_MIRRORS", f"http://127.0.0.1:9, {mirror.url}/good")  # down, then the local mirror
    assert mnist_mirrors() == ("http://127.0.0.1:9/", f"{mirror.url}/good/")
    data_dir = download_data(tmp_path / "data", use_kaggle=False, files=checksums, show_progress=False)
    assert mirror.requests == [f"/good/{name}" for name in checksums]
    # Without train_rows, the competition's share: 60% of the images in train.csv (42,000 of MNIST's 70,000).
    assert load_train_csv(data_dir / "train.csv")[0].shape == (60, 784)
    assert load_test_csv(data_dir / "test.csv").shape == (40, 784)


def test_a_failed_mirror_is_named_with_its_cause_in_a_few_words(tmp_path):
    import requests

    from get_data import _reason

    nested = requests.exceptions.ConnectionError(
        "HTTPSConnectionPool(host='example.org', port=443): Max retries exceeded with url: /x.gz (Caused by "
        "NameResolutionError(\"HTTPSConnection(host='example.org', port=443): Failed to resolve 'example.org' "
        "([Errno -2] Name or service not known)\"))")
    assert _reason(nested) == "failed to resolve 'example.org'"
    assert _reason(OSError("[Errno 111] Connection refused")) == "connection refused"
    assert _reason(ValueError("MD5 hash of downloaded file (x.gz) does not match\n the known hash")) == (
        "MD5 hash of downloaded file (x.gz) does not match the known hash")  # kept whole, on one line
    with pytest.raises(RuntimeError) as error:  # end to end: a port where nothing listens
        fetch_mnist_file("x.gz", "0" * 32, tmp_path, mirrors=["http://127.0.0.1:9/"], show_progress=False)
    assert "(http://127.0.0.1:9/: connection refused)" in str(error.value)
