"""The searchbox server: settings, Flask app, dialects, and the `serve` entry point."""
