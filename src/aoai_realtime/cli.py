"""The ``aoai-realtime`` command: one entry point, a module per sub-command.

Each sub-command lives in its own module exposing ``main(argv: list[str]) -> int`` and is
imported only when used, so ``aoai-realtime --help`` loads no speech models.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("aoai_realtime.server.cli", "run the middle tier and its web page (:8787)"),
    "engine": ("aoai_realtime.engine.cli", "run the offline local engine (:8788)"),
    "talk": ("aoai_realtime.commands.talk", "one conversation turn from a WAV file or text"),
    "chat": ("aoai_realtime.commands.chat", "an interactive conversation in the terminal"),
    "doctor": ("aoai_realtime.commands.doctor", "check the settings and say what to fix"),
    "replay": ("aoai_realtime.commands.replay", "replay a recorded session and report changes"),
}

USAGE = """usage: aoai-realtime COMMAND [options]

Voice agents on Azure OpenAI /realtime. With no Azure settings, every command talks to the
offline local engine.

commands:
{commands}

Run `aoai-realtime COMMAND --help` for a command's options.
Settings come from the environment, then `.env`, then `.dev.vars`: AZURE_OPENAI_ENDPOINT,
AZURE_OPENAI_DEPLOYMENT, AZURE_OPENAI_API_KEY (or `az login`), AZURE_OPENAI_API_VERSION (preview).
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        width = max(len(name) for name in COMMANDS)
        lines = "\n".join(f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items())
        print(USAGE.format(commands=lines))
        return 0
    if args[0] in ("-V", "--version"):
        from ._version import __version__

        print(f"aoai-realtime {__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        print(
            f"aoai-realtime: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        result: int = module.main(args[1:])
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
