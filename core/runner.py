"""The ONE loop every per-sample analysis runs through: tasks -> blocks -> the analysis' block function -> records.

It owns what every long run needs: resume (skip keys already written, repair a torn last line), bad-input handling
(an error record naming the record and field, or stop with ``strict``), Rich progress, data-parallel sharding
(accelerate / torchrun environment variables; rank 0 merges the shards deterministically) and chunked tensor storage so
memory does not grow with the number of samples.

Blocks are the unit of work AND of reproducibility. The items are cut into consecutive blocks of ``block_size`` (in
file order, bad records included); block ``b`` goes to rank ``b % world_size``. The engine's batches are formed inside
a block, and batched float arithmetic depends (at the 1e-7 level) on which rows share a batch, so a block is always
processed whole: a resumed run re-runs the block it was interrupted in (writing only the records still missing), and a
data-parallel run hands out whole blocks. Either way every sample sees exactly the batches of an uninterrupted
single-process run, and the records are byte-identical (timing aside; see records.strip_timing).

Input preparation overlaps model compute: an analysis that splits its block function into ``prepare_block`` (decode
images, run the image processor, tokenise; CPU work that does not touch the model) and ``process_block`` gets the
next block prepared in one background thread while the current block runs on the model, like a DataLoader worker.
Preparation is pure per-task work, so the records do not depend on it; errors raised in it surface in order, at the
block they belong to.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.progress import progress_bar, warn
from latentcheck.core.records import (ResultStream, ResultWriter, config_differences, in_record_order, input_digest,
                                      iter_results, merge_shards, provenance, refuse_existing_results,
                                      remove_stale_temporaries, replace_atomic_with, shard_path, write_json_atomic,
                                      write_shard_from)
from latentcheck.core.tasks import BadRecord, Task, read_tasks


@dataclass
class CommonOptions:
    """Options shared by every analysis (defined once in cli/options.py)."""

    model: str | None = None
    profile: str | None = None
    data: str | None = None
    out: str = "latentcheck-runs/run"
    limit: int | None = None
    batch_size: int = 8
    seed: int = 0
    quant: str = "auto"
    device: str = "auto"
    quiet: bool = False
    resume: bool = False
    strict: bool = False
    max_pixels: int | None = None
    trust_remote_code: bool = False
    decoding: dict = field(default_factory=dict)  # overrides of the profile's DecodingSpec fields
    system: str | None = None  # system prompt instead of the profile's
    max_prompt_tokens: int | None = None
    retry_errors: bool = False  # with resume: error records are run again, in place
    overwrite: bool = False  # a fresh run may replace another run's results in --out

    def config(self) -> dict[str, Any]:
        """The options recorded in the provenance (and compared on --resume). ``retry_errors`` and ``overwrite``
        change what happens to the folder, not the results, so they are left out; ``max_prompt_tokens`` is
        recorded only when set, so runs from before it existed still resume."""
        d = asdict(self)
        for k in ("retry_errors", "overwrite"):
            d.pop(k)
        if d["max_prompt_tokens"] is None:
            d.pop("max_prompt_tokens")
        return d


RUN_STAMP_ENV = "LATENTCHECK_RUN_STAMP"  # set by the launcher so every data-parallel process names the same folder


def run_stamp() -> str:
    """The run's timestamp (UTC, ``YYYYmmdd-HHMMSS``): ``$LATENTCHECK_RUN_STAMP`` when set, else now."""
    from datetime import datetime, timezone

    return os.environ.get(RUN_STAMP_ENV) or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def new_run_folder(root: str | os.PathLike) -> Path:
    """A new folder ``root/<timestamp>`` for one invocation (``-2``, ``-3``, ... when that name exists), so a rerun
    never replaces or mixes with an earlier run's files. Data-parallel processes share ``$LATENTCHECK_RUN_STAMP`` and
    therefore the folder; without it a data-parallel run must name its folder."""
    root = Path(root)
    shared = bool(os.environ.get(RUN_STAMP_ENV))
    if distributed()[1] > 1 and not shared:
        raise LatentcheckError(f"a data-parallel run needs --out (or {RUN_STAMP_ENV}) so every process writes the "
                               "same folder; `latentcheck --num-processes N` sets it")
    stamp = run_stamp()
    folder = root / stamp
    n = 2
    while not shared and folder.exists():
        folder = root / f"{stamp}-{n}"
        n += 1
    return folder


def latest_run_folder(root: str | os.PathLike) -> Path:
    """The newest ``root/<timestamp>`` folder (what ``--resume`` without ``--out`` continues)."""
    root = Path(root)
    runs = sorted((p for p in root.glob("[0-9]" * 8 + "-" + "[0-9]" * 6 + "*") if p.is_dir()),
                  key=lambda p: (p.name[:15], int(p.name[16:]) if p.name[16:].isdigit() else 1))
    if not runs:
        raise LatentcheckError(f"--resume without --out: no earlier run under {root}/ (pass the run's --out folder)")
    return runs[-1]


def load_for(opts: CommonOptions, default: str = "toy-latent"):
    """Load the model named by the options (default: a toy zoo model) through the one loader.

    Under data parallelism (WORLD_SIZE > 1) with ``--device auto`` and CUDA, each process takes its own GPU
    (``cuda:LOCAL_RANK``) instead of spreading one copy over every GPU (``device_map="auto"``, the single-process
    default for models too large for one GPU).
    """
    import time

    from latentcheck.core.loader import load_model
    from latentcheck.core.progress import status

    name = opts.model or default
    quiet = opts.quiet or not is_main_process()
    status(f"loading model {name} (profile {opts.profile or 'auto'}, device {opts.device}, quant {opts.quant}) ...",
           quiet)
    start = time.monotonic()
    lm = load_model(name, profile=opts.profile, quant=opts.quant, device=data_parallel_device(opts.device),
                    trust_remote_code=opts.trust_remote_code, max_pixels=opts.max_pixels,
                    max_prompt_tokens=opts.max_prompt_tokens)
    lm = apply_options(lm, opts)
    status(f"loaded {name} in {time.monotonic() - start:.1f}s (profile {lm.profile.name}, {lm.device}, "
           f"{str(lm.dtype).replace('torch.', '')})", quiet)
    status(run_header(lm), quiet)
    for w in lm.info.get("warnings", []):
        warn(w)
    return lm


def apply_options(lm, opts: CommonOptions):
    """The run's decoding overrides (``opts.decoding``: DecodingSpec fields) and system prompt (``opts.system``)
    applied to the loaded model's profile (a copy), so the engine, the prompts and the provenance all see them."""
    from dataclasses import replace

    from latentcheck.core.profiles import DecodingSpec

    if not opts.decoding and opts.system is None:
        return lm
    bad = set(opts.decoding) - set(DecodingSpec.__dataclass_fields__)
    if bad:
        raise LatentcheckError(f"unknown decoding setting(s) {sorted(bad)}; known: "
                               f"{sorted(DecodingSpec.__dataclass_fields__)}")
    prof = lm.profile
    try:
        dec = replace(prof.decoding, **opts.decoding)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise LatentcheckError(f"invalid decoding option: {str(e).splitlines()[-2:]}") from None
    prompt = prof.prompt if opts.system is None else replace(prof.prompt, system=opts.system)
    lm.profile = replace(prof, decoding=dec, prompt=prompt)
    return lm


def run_header(lm) -> str:
    """One line naming the protocol a run uses (which Monet convention, which decoding), for the log and records."""
    p = lm.profile
    d = p.decoding
    how = (f"sample T={d.temperature} top_p={d.top_p} top_k={d.top_k}" if d.do_sample else "greedy") + \
        (f" rep={d.repetition_penalty}" if d.repetition_penalty != 1.0 else "") + f", max {d.max_new_tokens} tokens"
    return f"profile {p.name} ({p.kind}): {p.description} Decoding: {how}."


def data_parallel_device(device: str) -> str:
    """``device``, except ``auto`` under data parallelism with CUDA, which becomes ``cuda:<LOCAL_RANK>``."""
    _, world = distributed()
    if device != "auto" or world == 1:
        return device
    if _use_cpu():
        return "cpu"
    import torch

    local = int(os.environ.get("LOCAL_RANK", 0) or 0)
    return f"cuda:{local % torch.cuda.device_count()}"


DefaultData = Callable[[str, Any], "str | Path"]
_DEFAULT_DATA: list[DefaultData] = []


def register_default_data(provider: DefaultData) -> DefaultData:
    """Register ``provider(split, model) -> task file`` used when no ``--data`` is given (latentcheck.toy registers
    the toy world's splits, so core never imports the toy world; ``model`` is ``--model``, so a zoo model trained on
    another toy world gets that world's tasks). The last registered provider wins."""
    _DEFAULT_DATA.append(provider)
    return provider


def data_path(opts: CommonOptions, split: str = "test") -> str:
    """The task file: --data, or the registered default data's split (the toy world, generated on first use)."""
    if opts.data:
        return opts.data
    if not _DEFAULT_DATA:
        raise LatentcheckError("no --data given and no default data registered (import latentcheck.toy)")
    return str(_DEFAULT_DATA[-1](split, opts.model))


def distributed() -> tuple[int, int]:
    """(rank, world_size) from accelerate / torchrun environment variables."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)) or 0)
    world = int(os.environ.get("WORLD_SIZE", 1) or 1)
    return rank, world


def _use_cpu() -> bool:
    import torch

    return not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def _wait_for_everyone(world: int) -> None:
    """Barrier over the data-parallel processes: a gloo process group from the launcher's environment (RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT), initialised on first use; an existing default group is reused. (accelerate's
    PartialState is not used: without ``cpu=True`` it does not recognise a CPU-only launch and its barrier silently
    does nothing.)"""
    if world <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        _check_launch_env(world)
        dist.init_process_group(backend="gloo", init_method="env://")
    dist.barrier()


def _check_launch_env(world: int) -> None:
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if world > 1 and missing:
        raise LatentcheckError(f"data-parallel run (WORLD_SIZE={world}) without {' and '.join(missing)}; start it "
                               "with `latentcheck --num-processes N`, `accelerate launch` or `torchrun`")


def barrier() -> None:
    """Wait until every data-parallel process gets here (no-op in a single process)."""
    _wait_for_everyone(distributed()[1])


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): where summaries, plots and merged files are written."""
    return distributed()[0] == 0


def block_ranges(n: int, block: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """(start, stop) item ranges of the blocks rank ``rank`` of ``world`` processes: consecutive blocks of ``block``
    items, block ``b`` to rank ``b % world`` (whole blocks, so batches match a single-process run)."""
    if block < 1:
        raise LatentcheckError(f"block size must be >= 1, got {block}")
    if world < 1 or not 0 <= rank < world:
        raise LatentcheckError(f"invalid data-parallel rank {rank} of world size {world}")
    return [(s, min(s + block, n)) for s in range(0, n, block)][rank::world]


def read_all_tasks(path: str, limit: int | None, strict: bool) -> list[Task | BadRecord]:
    return list(read_tasks(path, limit=limit, strict=strict))


def item_key(item: Task | BadRecord) -> str:
    return item.id if isinstance(item, Task) else f"error@{item.where}"


@dataclass
class RunResult:
    """What ``run_records`` returns: where results are and how many records of each kind."""

    results_path: str
    counts: dict[str, Any] = field(default_factory=dict)
    is_main: bool = True


def run_records(command: str, opts: CommonOptions, config: dict[str, Any], model_info: dict | None,
                items: list[Task | BadRecord], process_block: Callable[[Any], Iterable[dict]],
                block_size: int | None = None, description: str | None = None,
                prepare_block: Callable[[list[Task]], Any] | None = None, prefetch: bool = True,
                on_fresh_start: Callable[[], None] | None = None) -> RunResult:
    """Stream per-sample records for ``items`` through ``process_block`` into ``<out>/samples.jsonl``.

    ``process_block(tasks)`` returns one dict per task with a ``key`` field (or an ``error`` dict with ``key``,
    ``record``, ``field``, ``message`` for a task that failed, e.g. a corrupt image). It always receives the valid
    tasks of one whole block (module docstring), also on resume, where only the records still missing are written.
    Bad input records become error records (``strict`` raises instead, after writing the records before it). Records
    are written in item order. Returns counts; the caller computes its summary from the file, so a resumed run's
    summary covers all records. Only the main process (``RunResult.is_main``) may write summaries or plots.

    With ``prepare_block``, ``process_block`` receives ``prepare_block(tasks)`` instead of the tasks; with
    ``prefetch`` the next block's preparation runs in a background thread while the current block is processed
    (module docstring), else just before it.

    The results file's lock is taken before anything in ``--out`` is changed: a fresh run refuses a folder that holds
    another run's records unless ``--overwrite``, and ``on_fresh_start`` (e.g. clearing the tensors of an earlier
    run) is called only once this process holds the lock and starts the file afresh. Every record stores
    ``input_sha256`` (records.input_digest); ``--resume --retry-errors`` runs error records (and records whose input
    changed) again and puts them back in input order.
    """
    out_dir = Path(opts.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "samples.jsonl"
    rank, world = distributed()
    _check_launch_env(world)  # before any work, not at the first barrier
    path = shard_path(final, rank, world) if world > 1 else final
    prov = provenance(command, config, model_info, shard=(rank, world))
    keys = [item_key(it) for it in items]
    block = block_size or max(1, opts.batch_size) * 4
    blocks = block_ranges(len(items), block, rank, world)
    mine = [k for s, e in blocks for k in keys[s:e]]
    digests = {item_key(it): input_digest(it.to_dict() if isinstance(it, Task) else
                                          {"where": it.where, **it.error.to_dict()}) for it in items}
    if not opts.resume and not opts.overwrite and final != path:
        refuse_existing_results(final)  # data parallel: the merged file of an earlier run
    adopted = opts.resume and _adopt_previous_layout(final, path, prov, set(mine))
    with ResultWriter(path, prov, resume=opts.resume, retry_errors=opts.retry_errors, overwrite=opts.overwrite,
                      inputs=digests) as w:
        if rank == 0:  # before any process of this run writes (the barrier below)
            remove_stale_temporaries(out_dir)
        if w.fresh and on_fresh_start is not None:
            on_fresh_start()
        _wait_for_everyone(world)  # nobody writes before every process has cleared what it clears
        retried = bool(w.dropped)
        with progress_bar(len(mine), description or command, quiet=opts.quiet or rank != 0,
                          completed=sum(k in w.done for k in mine)) as bar:
            work = []
            for s, e in blocks:
                chunk = items[s:e]
                todo = [it for it in chunk if item_key(it) not in w.done]
                if todo:
                    tasks = [t for t in chunk if isinstance(t, Task)]
                    work.append((todo, tasks if any(isinstance(t, Task) for t in todo) else None))
            for todo, results in _processed_blocks(work, process_block, prepare_block, prefetch):
                for it in todo:
                    k = item_key(it)
                    if isinstance(it, BadRecord):
                        if opts.strict:
                            raise it.error
                        w.write_error(k, it.error.record, it.error.field, it.error.message,
                                      input_sha256=digests[k])
                        continue
                    if k not in results:
                        raise LatentcheckError(f"internal: {command} returned no record for {k!r}")
                    rec = results[k]
                    if "error" in rec:
                        err = rec["error"]
                        if opts.strict:
                            raise RecordError(err["record"], err["field"], err["message"])
                        # extra fields (e.g. what a benchmark scorer reads to count the sample as wrong) are kept
                        w.write_error(k, err["record"], err["field"], err["message"],
                                      **{x: v for x, v in rec.items() if x not in ("key", "error")},
                                      input_sha256=digests[k])
                    else:
                        w.write({**rec, "input_sha256": digests[k]})
                bar.advance(len(todo))
        counts = w.counter.as_dict()
    _wait_for_everyone(world)
    if rank != 0:
        return RunResult(str(path), counts, is_main=False)
    if world > 1:
        shards = [shard_path(final, r, world) for r in range(world)]
        counts = merge_shards(shards, final, keys).as_dict()
        for sp in shards:
            Path(sp).unlink()
    elif adopted or retried:  # adopted or retried records are out of item order: restore it
        counts = merge_shards([final], final, keys).as_dict()
    _remove_stale_shards(final)
    from latentcheck.core.export import write_flat, write_provenance

    write_provenance(final)  # provenance.json + samples.csv / .parquet: the pandas-friendly views (core/export.py)
    write_flat(final)
    return RunResult(str(final), counts)


def _processed_blocks(work: list[tuple[list, list[Task] | None]], process_block: Callable[[Any], Iterable[dict]],
                      prepare_block: Callable[[list[Task]], Any] | None,
                      prefetch: bool = True) -> Iterator[tuple[list, dict[str, dict]]]:
    """Yield ``(todo, {key: record})`` per block, in order (``tasks`` None: only bad records, nothing to compute).
    With ``prepare_block`` and ``prefetch``, the next block with tasks is prepared in a background thread while this
    one is processed."""
    prepare = prepare_block or (lambda tasks: tasks)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentcheck-prepare") as pool:
        ahead = prefetch and prepare_block is not None
        computed = [i for i, (_, tasks) in enumerate(work) if tasks is not None]
        following = dict(zip(computed, computed[1:]))
        pending: Future | None = pool.submit(prepare, work[computed[0]][1]) if ahead and computed else None
        for i, (todo, tasks) in enumerate(work):
            if tasks is None:
                yield todo, {}
                continue
            prepared = pending.result() if ahead else prepare(tasks)
            if ahead and i in following:
                pending = pool.submit(prepare, work[following[i]][1])
            yield todo, {r["key"]: r for r in process_block(prepared)}


def _shard_files(final: Path) -> list[Path]:
    return sorted(final.parent.glob(f"{final.stem}.rank*-of-*{final.suffix}"))


def _remove_stale_shards(final: Path) -> None:
    """After a complete merged/single-process file exists, shards left by another process count are obsolete."""
    for sp in _shard_files(final):
        sp.unlink(missing_ok=True)


def _adopt_previous_layout(final: Path, path: Path, prov: dict, wanted: set[str]) -> bool:
    """Resume across process counts: when this process's results file does not exist yet, start it from the records
    the run already has in another layout (the merged file of a finished data-parallel run, a single-process file,
    or the shards of a run with another process count). Files whose command or options differ are ignored. Returns
    True when records were adopted."""
    if path.exists():
        return False
    world = (prov.get("shard") or {}).get("world_size", 1)
    sources = [final] if final != path and final.exists() else []
    sources += [sp for sp in _shard_files(final) if not sp.name.endswith(f"-of-{world}{final.suffix}")]
    found: dict[str, dict] = {}
    stored = None
    for src in sources:
        try:
            stream = ResultStream(src)
        except LatentcheckError:
            continue
        p = stream.provenance
        if p.get("command") != prov.get("command") or config_differences(p.get("config") or {},
                                                                         prov.get("config") or {}):
            continue
        stored = stored or p
        try:
            for rec in stream:
                if rec.get("key") in wanted:
                    found.setdefault(rec["key"], rec)
        except RecordError:  # a corrupted file is not adopted further
            continue
    if stored is not None and found:
        adopted = {k: v for k, v in stored.items() if k != "shard"}
        if prov.get("shard") is not None:
            adopted["shard"] = prov["shard"]
        write_shard_from(path, adopted, found.values())
        return True
    return False


def load_records(path: str) -> list[dict]:
    """Sample and error records of a results file (provenance dropped) for summarising, in the canonical record-id
    order (``core.records.in_record_order``): every statistic (bootstrap CIs, paired tests, mediation, probes) sees
    the records in that one order, so a summary does not depend on the input file's order or on the order records
    were completed. The results file itself stays in input order."""
    return in_record_order(iter_results(path))


def error_record(key: str, err: RecordError) -> dict:
    return {"key": key, "error": err.to_dict()}


class TensorStore:
    """Captured tensors on disk in chunks (one .npz per block), so memory does not grow with the sample count."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, keys: list[str], arrays: dict[str, list[np.ndarray]]) -> None:
        name = hashlib.sha256("|".join(keys).encode()).hexdigest()[:16]
        payload = {f"{k}__{i}": np.asarray(v, dtype=np.float32) for k, vs in arrays.items() for i, v in enumerate(vs)}
        payload["__keys__"] = np.array(keys)
        replace_atomic_with(self.folder / f"{name}.npz", lambda fh: np.savez(fh, **payload))

    def load(self, keys: list[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
        """{sample key: {array name: array}}; optionally restricted to ``keys``."""
        out: dict[str, dict[str, np.ndarray]] = {}
        want = set(keys) if keys is not None else None
        for block in self.iter_blocks():
            for k, arrays in block.items():
                if want is None or k in want:
                    out.setdefault(k, {}).update(arrays)
        return out

    def _files(self) -> list[Path]:
        """Complete block files (a temp file left by a killed process starts with '.' and is skipped)."""
        return sorted(f for f in self.folder.glob("*.npz") if not f.name.startswith("."))

    def iter_blocks(self) -> Iterator[dict[str, dict[str, np.ndarray]]]:
        for f in self._files():
            yield read_tensor_block(f)


def read_tensor_block(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """One TensorStore block file as {sample key: {array name: array}}. Read with ``allow_pickle=False``: a file
    holding pickled objects (which could run code) or anything else unreadable is a LatentcheckError naming it."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            ks = [str(k) for k in z["__keys__"]]
            block: dict[str, dict[str, np.ndarray]] = {}
            for name in z.files:
                if name != "__keys__":
                    arr_name, i = name.rsplit("__", 1)
                    block.setdefault(ks[int(i)], {})[arr_name] = z[name]
            return block
    except (ValueError, OSError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as e:
        raise LatentcheckError(f"tensor file {path} is not a latentcheck tensor block ({e.__class__.__name__}: "
                               f"{str(e)[:160]}); pickled data is never loaded") from None


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez`` through a unique temp file and ``os.replace`` (records.replace_atomic_with): readers (and
    data-parallel processes writing the same file) never see a partial archive."""
    return replace_atomic_with(Path(path), lambda fh: np.savez(fh, **arrays))


def require(cond: bool, message: str) -> None:
    if not cond:
        raise LatentcheckError(message)
