pytest_plugins = ["tailor_cli.testing"]
