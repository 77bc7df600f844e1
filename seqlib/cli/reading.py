"""`status`, `show`, `log`, `list` and `verify`: reading the library, never writing it."""

from __future__ import annotations

import json

import click

from seqlib import errors
from seqlib.cli._common import (
    ask,
    at_option,
    cli,
    console,
    err_console,
    json_option,
    open_library,
    plural,
    table,
    warn,
)

STATUS_ROWS = 20  # concepts in status's table; a big library's table would bury the capacity


@cli.command("status", short_help="Concepts and the capacity left on every layer.")
@json_option
@at_option
@click.pass_context
def status_command(ctx, as_json: bool, at: str | None) -> None:
    """Show the base, the concepts, per-width capacity used/free, and the bottleneck layer.

    A layer of width m holds floor(m/r) orthogonal rank-r concepts; the narrowest layers
    fill first, and the library is full when any layer is.
    """
    s = ask(ctx, at, lambda lib: lib.status())
    if as_json:
        click.echo(json.dumps(s.to_json(), indent=2, sort_keys=True))
        return
    lib = s.commit.library
    echo = click.echo  # click, not rich: plain aligned columns, and rich's import is not paid
    echo(f"{_bold('base')}      {lib.base.kind}: {lib.base.source} (fingerprint {lib.base.fingerprint[:12]})")
    echo(f"{_bold('version')}   {s.version} ({s.commit_id[:12]})   {_bold('rank')} {lib.rank}")
    shown = s.commit.concepts[-STATUS_ROWS:]
    title = plural(len(s.commit.concepts), "concept")
    if len(shown) < len(s.commit.concepts):
        title += f" (the newest {len(shown)}; `seqlib list` shows all)"
    rows = [
        [
            c.name,
            c.token,
            c.method + ("" if c.orthogonal else " (not orthogonal)"),
            str(c.rank),
            str(len(c.images)),
            "imported" if c.final_loss is None else f"{c.initial_loss:.4f} → {c.final_loss:.4f}",
            c.created[:16].replace("T", " "),
        ]
        for c in shown
    ]
    echo(table(title, ["name", "token", "method", "rank", "images", "loss start → end", "added"], rows))
    header = ["width m", "layers", f"capacity ⌊m/{lib.rank}⌋", "dims used", "dims free", "fits"]
    rows = [
        [str(x) for x in (g.in_features, g.layers, g.capacity, g.used, g.free, g.free // lib.rank)] for g in s.groups
    ]
    echo(table("capacity by input width m", header, rows, right=True))
    echo(f"{_bold('bottleneck')} {s.bottleneck} ({s.bottleneck_free} dims free)")
    if lib.reserve:
        r = lib.reserve
        echo(
            f"{_bold('reserved')}  {sum(r.dims)} dims over {len(r.dims)} layers for no concept (the shared reserve: "
            f"{min(r.dims)}-{max(r.dims)} per layer, holding {min(r.captured):.0%}-{max(r.captured):.0%} of the "
            "generic inputs' energy); counted in dims used"
        )
    loose = [c.token for c in s.commit.concepts if not c.orthogonal]
    if loose and len(s.commit.concepts) > 1:
        warn(
            f"{', '.join(loose)} trained without projection (plain LoRA): composing them with other concepts "
            "mixes subspaces (no orthogonality guarantee)"
        )
    if s.worst_pairs:
        worst = ", ".join(f"<{a}> on <{b}> {x:.3g}" for a, b, x in s.worst_pairs[:3])
        echo(f"{_bold('worst crosstalk')} {worst}  (see `seqlib show NAME`)")
    echo(click.style(f"{s.fits} more rank-{lib.rank} concepts fit", fg="green" if s.fits > 0 else "red"))
    by = s.fits_by_policy
    if by["shrink"] != by["refuse"] or by["skip"] != by["refuse"]:
        echo(f"  with --when-full shrink: {by['shrink']}, skip: {by['skip']} (some layers at a smaller rank)")


def _bold(text: str) -> str:
    return click.style(text, bold=True)


@cli.command("show", short_help="Everything recorded about one concept.")
@click.argument("name")
@json_option
@at_option
@click.pass_context
def show_command(ctx, name: str, as_json: bool, at: str | None) -> None:
    """Token, method, rank, images with hashes, hyper-parameters, losses, size on disk, the
    tensor hash of its export (as kohya and Civitai compute it), and the concepts that
    interfere most with NAME.

    Crosstalk of A onto B: the energy of A's residual on B's recorded layer inputs, relative
    to B's own residual there (0 = A is invisible to B; 1 = as strong as B itself).
    """
    info = ask(ctx, at, lambda lib: lib.show(name))
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    c = info["concept"]
    t = c["training"] or {}
    method = t.get("method", "imported")
    click.echo(f"{_bold(c['token'])}  {method}, rank {c['rank']}, added {c['created']}")
    if c.get("imported"):
        imp = c["imported"]
        click.echo(f"imported from {imp['file']} ({imp['format']}), relative error {imp['relative_error']:.3f}")
    loss = "" if c["final_loss"] is None else f"loss {c['initial_loss']:.4f} → {c['final_loss']:.4f}   "
    click.echo(
        f"{loss}trained {c['train_seconds']:.0f}s   {info['size_bytes'] / 1024:.0f} KiB on disk   "
        f"payload {c['payload'][:12]}"
    )
    click.echo(f"tensor sha256 {info['tensor_sha256']} (of its kohya export: sshs_model_hash, Civitai AutoV3)")
    if info.get("preview"):
        click.echo(f"preview {info['preview']}")
    notes = c.get("notes") or {}
    if notes:
        click.echo(
            f"preferred weight {notes['weight']:g}"
            + (f"   trigger {notes['trigger']!r}" if notes["trigger"] else "")
            + (f"   tags {', '.join(notes['tags'])}" if notes["tags"] else "")
        )
        if notes["description"]:
            click.echo(notes["description"])
    if t:
        click.echo("hyper-parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(t.items())))
    if any(c["reserved"]):
        click.echo(f"--protect reserved up to {max(c['reserved'])} extra dims per layer")
    click.echo(f"{len(c['images'])} images:")
    for im in c["images"]:
        click.echo(f"  {im['file']}  sha256 {im['sha256'][:16]}…")
    for title, rows, key in (
        ("interfered with by", info["interfered_by"], "source"),
        ("interferes with", info["interferes_with"], "target"),
    ):
        if rows:
            click.echo(f"{title}: " + ", ".join(f"<{r[key]}> {r['crosstalk']:.3g}" for r in rows[:5]))


@cli.command("log", short_help="History of the library, newest first.")
@json_option
@click.pass_context
def log_command(ctx, as_json: bool) -> None:
    """One entry per change (init, add, …), newest first, with its version number."""

    if as_json:
        lib = open_library(ctx)  # every version whole
        tags = _by_commit(lib.tags())
        click.echo(
            json.dumps(
                [
                    {
                        "tags": tags.get(cid, []),
                        "version": v,
                        "commit": cid,
                        "parent": c.parent,
                        "message": c.message,
                        "timestamp": c.timestamp,
                        "concepts": [x.name for x in c.concepts],
                    }
                    for v, cid, c in lib.log()
                ],
                indent=2,
                sort_keys=True,
            )
        )
        return
    tagged, pinned, history = ask(ctx, None, lambda lib: (lib.tags(), _pinned(lib), lib.history()))
    tags = _by_commit(tagged)
    # click.style, not rich: a 1,000-version history printed through rich took seconds
    lines = []
    for entry in history:
        labels = "".join(" " + click.style(f"({t})", fg="green") for t in tags.get(entry.id, []))
        labels += " " + click.style("(checked out)", fg="magenta") if entry.id == pinned else ""
        size = click.style(f"({plural(entry.concepts, 'concept')})", dim=True)
        head = f"{click.style(f'version {entry.seq}', fg='yellow')}{labels} {click.style(entry.id[:12], dim=True)}"
        lines.append(f"{head}  {entry.timestamp}\n    {entry.message}   {size}")
    click.echo("\n".join(lines))


def _by_commit(tags: dict[str, str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for tag, commit_id in tags.items():
        found.setdefault(commit_id, []).append(tag)
    return found


def _pinned(lib) -> str | None:
    return lib.version()[1] if lib.checked_out() else None


@cli.command("list", short_help="The concepts, one line each.")
@json_option
@at_option
@click.pass_context
def list_command(ctx, as_json: bool, at: str | None) -> None:
    """The concepts of the current version (or --at), in training order, with the first 10 hex
    digits of each one's tensor hash (as A1111 shows it), preferred weight and tags."""
    rows = ask(ctx, at, _list_rows)
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    lines = [
        f"{r['token']:<20} {r['method']:<12} rank {r['rank']}  {r['tensor_sha256'][:10]}  "
        f"weight {r['weight']:g}  {r['images']} images  {r['created']}"
        + (f"  [{', '.join(r['tags'])}]" if r["tags"] else "")
        for r in rows
    ]
    # click, not rich: plain lines (greppable, one per concept at any terminal width; tags are the
    # user's words, never markup), and no rich import on a command that prints no table
    click.echo("\n".join(lines) if lines else "no concepts yet; add one with `seqlib add NAME FOLDER`")


def _list_rows(lib) -> list[dict]:
    commit = lib.head()
    return [
        {
            "name": c.name,
            "token": c.token,
            "method": c.method,
            "rank": c.rank,
            "orthogonal": c.orthogonal,
            "images": len(c.images),
            "final_loss": c.final_loss,
            "created": c.created,
            "tensor_sha256": lib.tensor_hash(c, commit),  # stored since format 2: no tensor is read
            "weight": c.weight,
            "tags": c.notes.tags if c.notes else [],
        }
        for c in commit.concepts
    ]


@cli.command("report", short_help="The library on one HTML page: previews, capacity, crosstalk, history.")
@click.option("-o", "--out", default="report.html", show_default=True, type=click.Path(dir_okay=False))
@click.option("--open", "open_it", is_flag=True, help="Open it in the default browser.")
@at_option
@click.pass_context
def report_command(ctx, out: str, open_it: bool, at: str | None) -> None:
    """Write one self-contained page (no network; images inlined): every concept with its
    preview, hash, trigger, loss curve and hyper-parameters; capacity per layer width with the
    bottleneck; the crosstalk heat map; the history with tags; recipes with their last render.

    \b
    Examples:
      seqlib report --open
      seqlib report -o site/library.html --at portfolio-v1
    """
    path = open_library(ctx, at).report(out)
    console.print(f"wrote {path}")
    if open_it:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


@cli.command("verify", short_help="Check every promise of the store format.")
@json_option
@click.option("--skip-base", is_flag=True, help="Do not load the base to check its fingerprint.")
@click.pass_context
def verify_command(ctx, as_json: bool, skip_base: bool) -> None:
    """Recompute commit hashes, the history chain, every array checksum, pairwise orthogonality
    on every layer, the capacity arithmetic and the base fingerprint. Exit 1 on any violation."""
    report = open_library(ctx).verify(check_base=not skip_base)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        worst = report["worst_orthogonality"]
        pair = " and ".join(worst["pair"]) or "no pair"
        console.print(
            f"{report['commits']} commits, {report['payloads_checked']} payloads, {report['concepts']} concepts; "
            f"worst overlap {worst['max_abs_cos']:.1e} ({pair}{' on ' + worst['layer'] if worst['layer'] else ''})"
        )
        for problem in report["problems"]:
            err_console.print(f"[red]problem:[/] {problem}")
        console.print("[green]ok[/]" if report["ok"] else f"[red]{len(report['problems'])} problems[/]")
    if not report["ok"]:
        ctx.exit(errors.DATA)
