"""Sensors whose docstring is their description in the UI (Dagster's decorators do not take it by themselves)."""

from __future__ import annotations

import inspect

import dagster as dg


def _described(decorator):
    def with_description(*args, **kwargs):
        def wrap(function):
            return decorator(*args, description=inspect.cleandoc(function.__doc__ or ""), **kwargs)(function)

        return wrap

    return with_description


sensor = _described(dg.sensor)
asset_sensor = _described(dg.asset_sensor)
