"""The command lines, one module each: parse the flags, call one library function.

`python -m sbpose_jax.<command>` (the aliases beside this package) and the `sbpose-<command>`
scripts (via `scripts`) run `sbpose_jax.commands.<command>.main`. `cli` is what every command shares
(--debug, one line per error, exit statuses); `config` loads a config by name or path.
Only this package imports `config`; no library module imports a command.
"""
