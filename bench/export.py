"""`latentcheck bench export-tasks`: any benchmark format -> the shared latentcheck task JSONL (core/tasks.py), so
perturb-input / perturb-latent / probe / audit run on V*, HR-Bench, MME-RealWorld, BLINK, VSP, TableVQA directly.

Each task becomes one line ``{id, image, question, options, answer, category, bbox, meta}``: ``answer`` is the gold
option LETTER (or the open answer), images are written once as files under ``<out folder>/<stem>-images/``
(content-addressed; relative paths in the JSONL, so the folder can be moved as a whole), multi-image tasks keep all
their images in ``meta.images`` (``image`` = the first). ``meta`` keeps the small scoring fields of the benchmark
(cycle_category, sub_task, task / subtask / l2_category, map_desc, split ...), ``meta.benchmark`` and
``meta.prompt_official`` = the exact user text of the benchmark's official variant (likelihood variants: the plain
question). Records that cannot be read are not written; they are returned (and listed by the CLI) with their row and
field.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.tasks import BadRecord, Task

_EXT = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp", "image/bmp": ".bmp"}
_BULKY_META = {"images", "text_input", "prompt", "choices_raw", "text"}


def _write_image(value: str | None, task: Task, folder: Path, rel_to: Path, field: str) -> str | None:
    """A data URI -> a file in ``folder`` (path relative to ``rel_to``); a path -> resolved and made relative."""
    if value is None:
        return None
    if value.startswith("data:"):
        head, _, payload = value.partition(",")
        try:
            data = base64.b64decode(payload, validate=True)
        except ValueError:
            raise RecordError(task.id, field, "invalid base64 image payload") from None
        name = hashlib.sha256(data).hexdigest()[:24] + _EXT.get(head[5:].split(";")[0], ".img")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        if not target.exists():
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        return os.path.relpath(target, rel_to)
    p = Path(value)
    if not p.is_absolute() and task.base_dir:
        p = Path(task.base_dir) / p
    if not p.is_file():
        raise RecordError(task.id, field, f"image file not found: {p}")
    return os.path.relpath(p.resolve(), rel_to)


def task_line(task: Task, bench, images_dir: Path, rel_to: Path) -> dict[str, Any]:
    """The task JSONL object for one benchmark task."""
    official = bench.variant("official")
    meta = {k: v for k, v in task.meta.items() if k not in _BULKY_META}
    meta["benchmark"] = bench.name
    meta["prompt_official"] = official.build(task)
    if task.meta.get("images"):
        meta["images"] = [_write_image(v, task, images_dir, rel_to, f"meta.images[{k}]")
                          for k, v in enumerate(task.meta["images"])]
        image = meta["images"][0]
    else:
        image = _write_image(task.image, task, images_dir, rel_to, "image")
    answer = task.answer_letter if task.options is not None and task.answer is not None else task.answer
    line = {"id": task.id, "image": image, "question": task.question, "options": task.options, "answer": answer,
            "category": task.category, "bbox": task.bbox, "meta": meta}
    return {k: v for k, v in line.items() if v is not None}


def export_tasks(benchmark: str, data: str | os.PathLike, out: str | os.PathLike, limit: int | None = None,
                 verify: bool = True, image_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write ``out`` (task JSONL); returns ``{"path", "written", "errors": [{"record", "field", "message"}],
    "images_dir"}``. ``out`` is replaced atomically."""
    from latentcheck.bench.registry import get_benchmark
    from latentcheck.core.records import to_jsonable

    bench = get_benchmark(benchmark)
    if image_root is not None:
        bench = bench.with_options(image_root=str(image_root))
    out_path = Path(out)
    if out_path.suffix != ".jsonl":
        raise LatentcheckError(f"--out must be a .jsonl file, got {out_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    images_dir = out_path.parent / f"{out_path.stem}-images"
    errors: list[dict[str, str]] = []
    written = 0
    tmp = out_path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for item in bench.load(data, limit=limit, verify=verify):
            if isinstance(item, BadRecord):
                errors.append(item.error.to_dict())
                continue
            try:
                line = task_line(item, bench, images_dir, out_path.parent)
            except RecordError as e:
                errors.append(e.to_dict())
                continue
            fh.write(json.dumps(to_jsonable(line), ensure_ascii=False) + "\n")
            written += 1
    tmp.replace(out_path)
    return {"path": str(out_path), "written": written, "errors": errors,
            "images_dir": str(images_dir) if images_dir.exists() else None}


__all__ = ["export_tasks", "task_line"]
