from tailor_cli.main import app

if __name__ == "__main__":  # not when a worker process (multiprocessing spawn) imports it
    app()
