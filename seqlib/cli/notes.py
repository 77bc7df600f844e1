"""`annotate` and `recipe`: what users say about their library, recorded without retraining."""

from __future__ import annotations

import json

import click

from seqlib.cli._common import Finite, cli, console, json_option, open_library
from seqlib.cli.output import sampling_options
from seqlib.errors import UsageError
from seqlib.selection import example_prompt


@cli.command("annotate", short_help="Describe a concept: description, trigger, preferred weight, tags.")
@click.argument("name")
@click.option("--description", default=None, help="What the concept is, in words.")
@click.option("--trigger", default=None, help="Words to use beside the token, e.g. 'corgi, studio light'.")
@click.option(
    "--weight",
    type=Finite(-10, 10),
    default=None,
    help="Preferred weight: the default in compose and in composed exports; a one-concept export keeps "
    "weight 1 and records it for loading (A1111: <lora:name:0.8>).",
)
@click.option("--tags", default=None, help="Comma-separated, e.g. pets,portfolio (replaces the old tags).")
@click.option("-m", "--message", default=None, help="Note recorded in the commit.")
@click.pass_context
def annotate_command(ctx, name, description, trigger, weight, tags, message) -> None:
    """Change NAME's notes in a new commit; its tensors, and so its hash, stay as they are.

    \b
    Examples:
      seqlib annotate mydog --description "Rex, our corgi" --trigger "corgi" --weight 0.8
      seqlib annotate mydog --tags pets,portfolio
    """
    tag_list = [t.strip() for t in tags.split(",") if t.strip()] if tags is not None else None
    concept = open_library(ctx).annotate(name, description, trigger, weight, tag_list, message)
    notes = concept.notes
    console.print(
        f"{concept.token}: weight {notes.weight:g}"
        + (f", trigger {notes.trigger!r}" if notes.trigger else "")
        + (f", tags {', '.join(notes.tags)}" if notes.tags else "")
        + (f" — {notes.description}" if notes.description else ""),
        markup=False,
    )


@cli.group("recipe", short_help="Named compositions: save, list, show, rm; replay with `compose @NAME`.")
def recipe_group() -> None:
    """A recipe is a composition with its settings (concepts and weights, prompt, seed, steps,
    guidance, size, sampler, layout), saved in the history. `seqlib compose @NAME` replays it
    pixel for pixel."""


@recipe_group.command("save")
@click.argument("name")
@click.argument("concepts")
@sampling_options
@click.option("--replace", is_flag=True, help="Overwrite a recipe of the same name.")
@click.pass_context
def recipe_save(ctx, name, concepts, replace, **sampling) -> None:
    """Save CONCEPTS (comma-separated, optional weights) with these settings as recipe NAME.

    A concept without a weight gets its preferred weight, fixed now.

    \b
    Example:
      seqlib recipe save beach-day mydog=0.8,cat --prompt "a photo of <mydog> and <cat> on a beach" --seed 3
      seqlib compose @beach-day
    """
    if sampling["prompt"] is None:
        raise UsageError(f"--prompt is needed, e.g. --prompt {example_prompt(concepts)!r}")
    recipe = open_library(ctx).save_recipe(name, concepts, replace=replace, **sampling)
    weights = ", ".join(f"{n}={w:g}" for n, w in recipe.concepts)
    console.print(f"Saved recipe @{name}: {weights}; replay with `seqlib compose @{name}`")


@recipe_group.command("list")
@json_option
@click.pass_context
def recipe_list(ctx, as_json: bool) -> None:
    """The recipes of the current version."""
    recipes = open_library(ctx).head().recipes
    if as_json:
        click.echo(json.dumps({n: r.model_dump(mode="json") for n, r in recipes.items()}, indent=2, sort_keys=True))
        return
    for name, r in recipes.items():
        weights = ",".join(f"{n}={w:g}" for n, w in r.concepts)
        console.print(f"@{name:<20} {weights:<30} {r.prompt!r} seed {r.seed}", highlight=False, markup=False)
    if not recipes:
        console.print("no recipes yet; save one with `seqlib recipe save NAME CONCEPTS --prompt ...`")


@recipe_group.command("show")
@click.argument("name")
@click.pass_context
def recipe_show(ctx, name: str) -> None:
    """Every setting of recipe NAME, as JSON."""
    click.echo(json.dumps(open_library(ctx).recipe(name).model_dump(mode="json"), indent=2, sort_keys=True))


@recipe_group.command("rm")
@click.argument("name")
@click.pass_context
def recipe_rm(ctx, name: str) -> None:
    """Remove recipe NAME in a new commit (earlier versions keep it)."""
    open_library(ctx).remove_recipe(name)
    console.print(f"Removed recipe @{name}")
