"""Options shared by several commands, declared once (pip-tools' ``options.py``).

Imports click and json only, so ``resblock --help`` stays fast: the profile names are
read from ``spec/constants.json`` directly, and a name is checked by
:func:`resblock.spec.tolerance.check_name` when a command line is parsed.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import click


@functools.lru_cache(maxsize=1)
def _tolerance() -> dict:
    text = resources.files("resblock.spec").joinpath("constants.json").read_text("utf-8")
    return json.loads(text)["tolerance"]


def profile_names() -> tuple[str, ...]:
    """The spec's profiles, in the order of ``constants.json``."""
    return tuple(_tolerance()["profiles"])


class ProfileParam(click.ParamType):
    """A tolerance profile name; a renamed one (``tf32``) is refused with its new name."""

    name = "profile"

    def get_metavar(self, param, *args, **kwargs) -> str:
        return "[" + "|".join(profile_names()) + "]"

    def convert(self, value, param, ctx):
        from resblock.spec.tolerance import ProfileError, check_name

        try:
            return check_name(value)
        except ProfileError as e:
            self.fail(str(e), param, ctx)

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(n) for n in profile_names() if n.startswith(incomplete)]


PROFILE = ProfileParam()
