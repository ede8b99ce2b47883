"""`pytest harness/` loads the qabi plugin from here: no installation step, no entry point."""

pytest_plugins = ["harness.plugin"]
