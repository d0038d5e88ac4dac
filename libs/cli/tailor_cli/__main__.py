from tailor_cli.main import app

app()
