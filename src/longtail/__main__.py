from longtail.cli import entry

entry()
