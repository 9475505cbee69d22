"""Azure ML's inference server (`azmlinfsrv`) entry script: see score.py."""
