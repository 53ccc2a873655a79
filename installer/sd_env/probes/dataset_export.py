"""Probe: a `save_to_disk` dataset folder as parquet, the form the v0.20.0 script can load.

The script calls `load_dataset(--dataset_name)`, which cannot read what
`Dataset.save_to_disk` wrote (datasets 2.14 fails with DatasetGenerationError);
it reads a folder of parquet files, as in a dataset repository.

    python dataset_export.py SAVED_DIR OUT_DIR   ->   OUT_DIR/data/train-00000-of-00001.parquet
"""

import sys
from pathlib import Path

from _result import report


def main(saved, out):
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(saved)
    train = loaded["train"] if isinstance(loaded, DatasetDict) else loaded
    target = Path(out) / "data" / "train-00000-of-00001.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    train.to_parquet(str(target))
    return {"ok": True, "parquet": str(target), "rows": train.num_rows, "columns": train.column_names}


if __name__ == "__main__":
    report(main, sys.argv[1], sys.argv[2])
