"""`seqlib report`: the library on one self-contained HTML page (no network, images inlined).

jinja2 renders ``assets/report.html.j2`` (autoescaped: descriptions and tags are the user's
words); the charts are inline SVG drawn by the template's macros: a loss sparkline per
concept, capacity bars per layer width, the crosstalk heat map, the history timeline. No
JavaScript and no chart library: three chart kinds of a few shapes each did not justify one.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import TYPE_CHECKING

from seqlib import crosstalk

if TYPE_CHECKING:
    from seqlib.repo import Repository

TEMPLATE = Path(__file__).parent / "assets" / "report.html.j2"
HEATMAP_MAX = 60  # concepts; above, the page lists the worst pairs instead of an N x N grid
WORST_PAIRS = 50


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def report_data(lib: Repository) -> dict:
    """Everything the page shows, as plain values (tested without a browser)."""
    status = lib.status()
    commit = status.commit
    concepts = []
    for c in commit.concepts:
        preview = None
        if c.preview:
            preview = _data_uri(lib.store.read_preview(c.preview))
        concepts.append(
            {
                "name": c.name,
                "token": c.token,
                "hash": lib.tensor_hash(c, commit),
                "method": c.method,
                "rank": c.rank,
                "weight": c.weight,
                "trigger": c.notes.trigger if c.notes else "",
                "description": c.notes.description if c.notes else "",
                "tags": c.notes.tags if c.notes else [],
                "preview": preview,
                "curve": c.loss_curve or [],
                "initial_loss": c.initial_loss,
                "final_loss": c.final_loss,
                # eps: kept in old records, read by no trainer
                "hyper": c.training.model_dump(exclude={"prompt_template", "init_word", "eps"}) if c.training else {},
                "imported": c.imported.file if c.imported else None,
                "created": c.created,
            }
        )
    names = [c.name for c in commit.concepts]
    matrix = None
    if 1 < len(names) <= HEATMAP_MAX:
        pairs = crosstalk.all_pairs(commit.concepts, lib.store.crosstalk)
        value = {(a, b): x for a, b, x in pairs}
        matrix = [[value.get((a, b)) for b in names] for a in names]  # row: source, column: target
    tags: dict[str, list[str]] = {}
    for tag, cid in lib.tags().items():
        tags.setdefault(cid, []).append(tag)
    history = [
        {"version": v, "message": c.message, "timestamp": c.timestamp, "tags": tags.get(cid, []), "id": cid}
        for v, cid, c in lib.log()
    ]
    recipes = []
    for name, r in commit.recipes.items():
        render = lib.store.last_render(name)
        recipes.append(
            {
                "name": name,
                "concepts": r.concepts,
                "prompt": r.prompt,
                "seed": r.seed,
                "steps": r.steps,
                "layout": r.layout,
                "render": _data_uri(render) if render else None,
            }
        )
    return {
        "root": _shown(lib.root),
        "version": status.version,
        "commit": status.commit_id,
        "base": commit.library.base.source,
        "rank": commit.library.rank,
        "concepts": concepts,
        "widths": [g.__dict__ for g in status.groups],
        "bottleneck": status.bottleneck,
        "bottleneck_width": next(x.in_features for x in commit.library.layers if x.name == status.bottleneck),
        "fits": status.fits,
        "fits_by_policy": status.fits_by_policy,
        "names": names,
        "matrix": matrix,
        "fold_above": HEATMAP_MAX,  # a big library's cards fold away, so capacity and crosstalk stay in view
        "worst_pairs": crosstalk.worst_pairs(commit.concepts, WORST_PAIRS, lib.store.crosstalk),
        "history": history,
        "recipes": recipes,
    }


def _shown(root) -> str:
    """The library's location as the page shows it: under the home folder as ``~/…`` (a page
    passed around should not spell out the machine's user folder)."""
    if isinstance(root, str):
        return root  # an object-store URL
    home = Path.home()
    return f"~/{Path(root).resolve().relative_to(home)}" if Path(root).resolve().is_relative_to(home) else str(root)


def write_report(lib: Repository, out: str | Path) -> Path:
    """Write the page to ``out`` (atomically) and return its path."""
    import jinja2

    from seqlib.backends import atomic_write

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["log10"] = lambda x: math.log10(max(float(x), 1e-12))
    page = env.from_string(TEMPLATE.read_text()).render(**report_data(lib))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, page.encode())
    return out
