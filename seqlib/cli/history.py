"""`rm`, `tag`, `checkout`, `revert` and `gc`: moving through and pruning the history."""

from __future__ import annotations

import click

from seqlib.cli._common import (
    NON_NEGATIVE,
    cli,
    console,
    open_library,
    plural,
)


@cli.command("gc", short_help="Delete data no version reaches.")
@click.option(
    "--grace",
    type=NON_NEGATIVE,
    default=3600,
    show_default=True,
    help="Keep anything younger than this many seconds (an add may be writing it now).",
)
@click.option("--dry-run", is_flag=True, help="List what would be deleted.")
@click.pass_context
def gc_command(ctx, grace: float, dry_run: bool) -> None:
    """Delete payloads and commits that no version or tag reaches (left by failed or
    conflicting adds) and leftovers of interrupted writes. History is never touched."""
    removed = open_library(ctx).gc(grace_seconds=grace, dry_run=dry_run)
    for key in removed:
        console.print(("would remove " if dry_run else "removed ") + key)
    console.print(f"{len(removed)} unreachable objects {'found' if dry_run else 'removed'}")


@cli.command("rm", short_help="Remove a concept (earlier versions keep it).")
@click.argument("name")
@click.option("-m", "--message", default=None, help="Note recorded in the commit.")
@click.pass_context
def rm_command(ctx, name: str, message: str | None) -> None:
    """Remove NAME from the library in a new commit; its subspace returns to free capacity.

    Concepts added after NAME stay valid: they were trained orthogonal to it. The earlier
    versions still hold NAME (`seqlib revert VERSION` brings it back).

    \b
    Example:
      seqlib rm mydog
    """
    lib = open_library(ctx)
    lib.rm(name, message)
    console.print(f"Removed <{name}>; {lib.status().fits} more concepts fit now.")


@cli.command("tag", short_help="Name a version.")
@click.argument("name")
@click.argument("version", required=False)
@click.pass_context
def tag_command(ctx, name: str, version: str | None) -> None:
    """Give VERSION (default: the current one) the tag NAME; tags never move.

    \b
    Examples:
      seqlib tag portfolio-v1
      seqlib tag before-styles 3
    """
    v, commit_id = open_library(ctx).tag(name, version)
    console.print(f"Tagged version {v} ({commit_id[:12]}) as {name}")


@cli.command("checkout", short_help="Pin a read-only version (or `main` to go back).")
@click.argument("version")
@click.pass_context
def checkout_command(ctx, version: str) -> None:
    """Read VERSION|TAG in compose, status, show and list until `seqlib checkout main`.

    While a version is checked out, add/rm/revert are refused: history is only ever appended.
    """
    pinned = open_library(ctx).checkout(version)
    console.print("Back on the current version." if pinned is None else f"Checked out version {pinned[0]} (read-only).")


@cli.command("revert", short_help="Restore an old version in a new commit.")
@click.argument("version")
@click.option("-m", "--message", default=None, help="Note recorded in the commit.")
@click.pass_context
def revert_command(ctx, version: str, message: str | None) -> None:
    """Make a new commit whose concepts are exactly those of VERSION|TAG (nothing is deleted)."""
    commit = open_library(ctx).revert(version, message)
    console.print(f"{commit.message}: {plural(len(commit.concepts), 'concept')}")
