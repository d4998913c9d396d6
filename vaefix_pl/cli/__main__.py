from vaefix_pl.cli.commands import run

run()
