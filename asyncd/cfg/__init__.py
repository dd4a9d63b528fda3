"""The kamailio.cfg compiler: preprocess -> lex -> parse -> fixups -> Python
source -> compiled Script (entry point: asyncd.cfg.compiler.compile_cfg).

Runs in: main process (compilation); the compiled Script runs in every
process that runs routes.
"""
