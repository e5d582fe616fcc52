"""The `w2v` command line: the library's commands plus `serve` and `worker`."""

from __future__ import annotations

import pytest

from app.cli import build_parser, main


def test_all_commands_are_registered() -> None:
    parser = build_parser()
    for command in ("train", "eval", "similar", "analogy", "export", "import", "serve", "worker"):
        args = parser.parse_args(_minimal(command))
        assert args.command == command and callable(args.func)


def _minimal(command: str) -> list[str]:
    required = {
        "train": ["corpus.txt", "--out", "m"],
        "eval": ["m"],
        "similar": ["m", "king"],
        "analogy": ["m", "a", "b", "c"],
        "export": ["m", "--out", "x"],
        "import": ["f", "--out", "m"],
    }
    return [command, *required.get(command, [])]


def test_serve_and_worker_options() -> None:
    args = build_parser().parse_args(
        ["serve", "--host", "0.0.0.0", "--port", "9000", "--store", "/s", "--broker", "redis://r:6379/0", "--no-worker"]
    )
    assert (args.host, args.port, args.store, args.broker, args.no_worker) == (
        "0.0.0.0",
        9000,
        "/s",
        "redis://r:6379/0",
        True,
    )
    args = build_parser().parse_args(["worker", "--queues", "gpu", "--device", "cuda"])
    assert (args.queues, args.device) == ("gpu", "cuda")
    defaults = build_parser().parse_args(["serve"])
    # Unset flags leave the environment (W2V_*) in charge.
    assert (defaults.host, defaults.port, defaults.store, defaults.broker) == (None, None, None, None)


def test_worker_rejects_unknown_queues(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--queues", "gpu,tpu"]) != 0
    assert "w2v: error: --queues" in capsys.readouterr().err


def test_invalid_environment_is_an_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("W2V_PORT", "not-a-port")
    assert main(["serve", "--no-worker"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("w2v: error: invalid settings") and "port" in err
