"""`python -m training ...` is `stockcast train ...`: the entry point torchrun can launch with -m."""

from service.cli import app

if __name__ == "__main__":
    import sys

    app(args=["train", *sys.argv[1:]], prog_name="python -m training")
