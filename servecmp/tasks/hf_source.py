"""Rows of a Hugging Face dataset split, from the hub or from a local copy of the hub repository.

Both paths go through `datasets.load_dataset` and hand back plain dicts, so a task's row → item
code is the same whether the rows came from the hub or from files on disk. A local copy follows
the hub repository layout: `DIR/<config>/<split>-*.parquet` (e.g. `cais/mmlu`'s
`astronomy/test-00000-of-00001.parquet`), or `DIR/data/<split>-*.parquet` / `DIR/<split>.jsonl`
for datasets without configs. `.parquet`, `.jsonl` and `.json` files are accepted.

`datasets` is imported lazily: it is an optional extra and takes a second to import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from servecmp.errors import UserError

_BUILDER_BY_SUFFIX = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


def _datasets() -> Any:
    try:
        import datasets
    except ModuleNotFoundError as exc:
        raise UserError(
            "the Hugging Face loaders need the `datasets` package: pip install 'servecmp[hf]'"
        ) from exc
    return datasets


def describe(dataset: str, config: str | None, split: str, local_dir: Path | None) -> str:
    name = f"{dataset}" + (f" ({config})" if config else "") + f" {split} split"
    return f"{name} from local copy {local_dir}" if local_dir else f"{name} from the Hugging Face hub"


def _split_folder(local_dir: Path, config: str | None) -> Path:
    return local_dir / config if config and (local_dir / config).is_dir() else local_dir


def split_files(local_dir: Path, config: str | None, split: str) -> list[Path]:
    """The files holding one split in a local copy of a hub dataset repository."""
    base = _split_folder(local_dir, config)
    found: list[Path] = []
    for folder in (base, base / "data"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            stem = path.name[: -len(path.suffix)] if path.suffix else path.name
            if (
                path.is_file()
                and path.suffix in _BUILDER_BY_SUFFIX
                and (stem == split or stem.startswith(f"{split}-"))
            ):
                found.append(path)
    return found


def local_configs(local_dir: Path) -> list[str]:
    """Config names present in a local copy: its sub-directories, minus `data/` and hidden ones
    (`huggingface-cli download --local-dir` leaves a `.cache/` there)."""
    if not local_dir.is_dir():
        raise UserError(f"dataset directory {local_dir} not found")
    return sorted(
        p.name for p in local_dir.iterdir() if p.is_dir() and p.name != "data" and not p.name.startswith(".")
    )


def load_split(
    dataset: str, config: str | None, split: str, *, local_dir: Path | None = None
) -> list[dict[str, Any]]:
    """One split as a list of row dicts: from `local_dir` when given, else from the hub."""
    ds_lib = _datasets()
    where = describe(dataset, config, split, local_dir)
    if local_dir is None:
        try:
            ds = ds_lib.load_dataset(dataset, config, split=split)
        except Exception as exc:  # network, auth, missing config: all mean "cannot get it here"
            raise UserError(
                f"cannot load {where} ({type(exc).__name__}: {exc}); "
                "offline, pass --data-dir with a local copy"
            ) from exc
        return list(ds.to_list())

    if not local_dir.is_dir():
        raise UserError(f"dataset directory {local_dir} not found")
    files = split_files(local_dir, config, split)
    if not files:
        base = _split_folder(local_dir, config)
        raise UserError(
            f"no {split} split in {base} "
            f"(expected {split}.jsonl, {split}.json or {split}-*.parquet there or in data/)"
        )
    builders = {_BUILDER_BY_SUFFIX[p.suffix] for p in files}
    if len(builders) > 1:
        raise UserError(f"{where}: mixed file formats {sorted(p.name for p in files)}")
    try:
        ds = ds_lib.load_dataset(builders.pop(), data_files={split: [str(p) for p in files]}, split=split)
    except Exception as exc:  # a corrupt or mis-shaped file: name it instead of a traceback
        raise UserError(f"cannot read {where}: {type(exc).__name__}: {exc}") from exc
    return list(ds.to_list())
