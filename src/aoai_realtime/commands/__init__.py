"""Command-line tools built on the SDK: talk, chat, doctor, replay."""
