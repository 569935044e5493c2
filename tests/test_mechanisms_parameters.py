"""Mechanisms own their parameters: config keys and CLI flags of every command are generated
from the mechanisms' parameter dataclasses, so a new parameter is one dataclass field."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

import pytest

from protocol.errors import UserInputError
from secure_assist.audit.config import AuditConfig, audit_config_class
from secure_assist.commands.finetune import add_config_flags, config_from_args
from secure_assist.config import FinetuneConfig, RunSettings, with_mechanism_parameters
from secure_assist.mechanism_parameters import MECHANISM_PARAMETERS
from secure_assist.mechanisms import MECHANISMS, parameter_fields
from secure_assist.mechanisms.delta import RotationMask


def test_every_mechanism_parameter_is_a_key_of_the_run_and_audit_configs() -> None:
    names = {item.name for item in parameter_fields()}
    assert names <= {f.name for f in fields(FinetuneConfig)} and names <= {f.name for f in fields(AuditConfig)}
    for cls in MECHANISMS.values():
        for item in fields(cls.Parameters):
            assert item.metadata.get("help"), (cls.name, item.name)  # every generated flag explains itself


@dataclass(frozen=True)
class WidgetParameters:
    widget_strength: float = field(default=0.5, metadata={"help": "how strongly the widget protects"})

    def __post_init__(self) -> None:
        if not 0 < self.widget_strength <= 1:
            raise UserInputError(f"widget_strength must be in (0, 1], got {self.widget_strength}")


class Widget(RotationMask):
    """A mechanism added in this test: only its parameter dataclass is new."""

    name = "widget"
    Parameters = WidgetParameters


@pytest.mark.parametrize("command", ["finetune", "audit"])
def test_a_new_parameter_gives_a_config_key_and_a_flag_by_itself(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    # A new mechanism is its class and its entry in the light list the flags come from.
    monkeypatch.setitem(MECHANISMS, Widget.name, Widget)
    monkeypatch.setitem(MECHANISM_PARAMETERS, Widget.name, WidgetParameters)
    config_class = with_mechanism_parameters(RunSettings, "Generated", "")
    if command == "audit":  # the audit's configuration is generated from the run's
        config_class = audit_config_class(config_class, "GeneratedAudit")
    parser = argparse.ArgumentParser()
    add_config_flags(parser, config_class)
    assert "--widget-strength" in parser.format_help() and "how strongly the widget protects" in parser.format_help()
    config = config_from_args(parser.parse_args(["--widget-strength", "0.25"]), config_class)
    assert config.widget_strength == 0.25
    with pytest.raises(UserInputError, match="widget_strength"):
        config_from_args(parser.parse_args(["--widget-strength", "3"]), config_class)
