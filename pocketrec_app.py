"""Entry point for `flet build apk|ipa|linux|windows|macos` (see [tool.flet] in pyproject.toml):
the packaged app starts the clinic app on the bundled medication demo."""

from app.main import run

if __name__ == "__main__":
    run()
