"""`fedaas privacy`: epsilon for a noise level, noise for a target epsilon (cli.privacy)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

# ---------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    from fedaas.cli.privacy import privacy

    app = typer.Typer()
    app.command("privacy")(privacy)
    app.command("other")(lambda: None)  # keep "privacy" a subcommand, as in the real app
    return app


def test_cli_prints_epsilon_for_both_accountants(cli):
    result = CliRunner().invoke(cli, ["privacy", "-z", "1", "-q", "0.01", "-T", "1000"])
    assert result.exit_code == 0, result.output
    assert "2.101" in result.output and "1.829" in result.output


def test_cli_finds_noise_for_a_target_epsilon_and_shows_the_ou_cost(cli):
    result = CliRunner().invoke(cli, ["privacy", "-q", "1", "-T", "100", "-e", "10"])
    assert result.exit_code == 0, result.output
    assert "PLD" in result.output and "RDP" in result.output
    result = CliRunner().invoke(
        cli, ["privacy", "-q", "1", "-T", "100", "-z", "5", "--theta", "0.9"]
    )
    assert result.exit_code == 0, result.output
    assert "73.832" in result.output and "9.997" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-q", "0.5", "-T", "10", "-z", "1", "--theta", "0.5"], "--sampling-rate 1"),
        (["-q", "1", "-T", "10"], "exactly one"),
        (["-q", "1.5", "-T", "10", "-z", "1"], "--sampling-rate"),
        (["-q", "1", "-T", "0", "-z", "1"], "--rounds"),
        (["-q", "1", "-T", "10", "-z", "1", "--delta", "2"], "--delta"),
    ],
)
def test_cli_reports_bad_input_in_one_line(cli, args, message):
    result = CliRunner().invoke(cli, ["privacy", *args])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1
