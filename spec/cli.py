"""``resblock spec``: print the spec version and constants."""

from __future__ import annotations

import json

import click


@click.command("spec")
@click.option("--json", "as_json", is_flag=True, help="Print the constants as JSON.")
def spec(as_json):
    """Print the spec version and its machine-readable constants."""
    from resblock.spec.constants import load

    c = load()
    if as_json:
        click.echo(json.dumps(c, indent=2))
        return
    bn, conv = c["batch_norm"], c["conv"]
    click.echo(f"resblock spec {c['spec_version']} (golden format {c['format_version']})")
    click.echo(f"  layout      {c['layout']['activations']}, kernel {c['layout']['kernel']} "
               f"(3,3,C,F), flatten {c['layout']['flatten_order']}")
    click.echo(f"  conv        3x3 stride {conv['stride']}, zero padding 1, "
               f"{conv['operation']}, bias {conv['use_bias']}, precision {conv['precision']}")
    click.echo(f"  batch norm  train mode over N,H,W; epsilon {bn['epsilon']} inside sqrt; "
               f"{bn['variance']} variance {bn['variance_formula']}")
    click.echo(f"  running     {bn['momentum_convention']}, momentum {bn['momentum']}, "
               f"update uses {bn['running_var_update_uses']} variance")
    click.echo("  tolerance   profiles " + ", ".join(c["tolerance"]["profiles"]))
    click.echo("  (full constants: resblock spec --json; document: spec/SPEC.md)")
