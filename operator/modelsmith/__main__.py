from modelsmith.cli import entrypoint

raise SystemExit(entrypoint())
