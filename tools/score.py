#!/usr/bin/env python
"""Score a submission locally, as Kaggle would: check it (header, one row per label, ids 1..N, digits), then print
its accuracy against the true labels (data/test_labels.csv, which `make data` writes when it builds from MNIST).

    python tools/score.py output/submission.csv data/test_labels.csv
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_helpers import score_submission


def main(argv: Sequence[str] | None = None) -> int:
    """Print the accuracy; 0 on success, 1 with a one-line error naming the file and the row."""
    parser = argparse.ArgumentParser(prog="python tools/score.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("submission", help="the submission CSV (ImageId,Label)")
    parser.add_argument("labels", help="the true labels in the same layout, e.g. data/test_labels.csv")
    args = parser.parse_args(argv)
    try:
        score_submission(args.submission, args.labels)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
