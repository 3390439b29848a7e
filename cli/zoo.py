"""`latentcheck zoo build|list`: the toy zoo of tiny trained models with known causal structure."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from latentcheck.cli import options as o
from latentcheck.cli.app import app, out_console

zoo_app = typer.Typer(help="Build and list the toy zoo (tiny Qwen2.5-VL-class models with known ground truth).",
                      no_args_is_help=False)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("build")
def build(out: Annotated[Optional[str], typer.Option("--out", help="Where to write the zoo (default: the user cache "
                                                     "~/.cache/latentcheck/zoo).")] = None,
          models: Annotated[Optional[str], typer.Option("--models", help="Comma-separated subset (bases are built "
                                                        "first).")] = None,
          seed: o.Seed = 0, quiet: o.Quiet = False) -> None:
    """Train the zoo reproducibly (seeded) on the toy world."""
    from latentcheck.core.progress import progress_bar
    from latentcheck.toy.zoo import ZOO, build_zoo

    names = [m.strip() for m in models.split(",")] if models else None
    total = sum(ZOO[n].steps for n in (names or ZOO) if n in ZOO)
    with progress_bar(total, "zoo build", quiet=quiet) as bar:
        cards = build_zoo(out, names, seed=seed, on_model=lambda n: bar.set_description(f"training {n}"),
                          on_step=lambda n, s, st: bar.advance(1))
    if not quiet:
        _table(cards)


@zoo_app.command("list")
def list_cmd() -> None:
    """Show each zoo model with its held-out accuracy and how it was made."""
    from latentcheck.toy.zoo import zoo_cards

    _table(zoo_cards())


def _table(cards: list[dict]) -> None:
    t = Table(title="latentcheck toy zoo")
    for c in ("model", "test acc", "chance", "held-out combos", "how it was made", "where"):
        t.add_column(c, overflow="fold")
    for c in cards:
        acc = f"{c['test_accuracy']:.3f} (n={c['test_n']})" if c.get("test_accuracy") is not None else "not built"
        held = f"{c['heldout_combo_accuracy']:.3f} (n={c['heldout_n']})" if c.get("heldout_combo_accuracy") \
            is not None else "-"
        t.add_row(c["name"], acc, str(c.get("chance", "-")), held, c.get("how", ""), c.get("path", "-"))
    out_console.print(t)
