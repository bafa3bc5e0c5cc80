"""Command line: placeholder until the CLI issue lands."""
import click


@click.group()
def main():
    """scorelab command line."""


@main.command()
def demo():
    """Run the embedded default demo."""
    click.echo("scorelab demo: coming soon")
