"""`transferkit serve`: listens on localhost unless told otherwise, answers over real HTTP,
fails with one line on a taken port or a missing model, and costs the other commands
no FastAPI import."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from transferkit.cli import build_parser, main  # noqa: E402
from transferkit.jobs import serve  # noqa: E402


def parsed(*argv) -> dict:
    options = vars(build_parser().parse_args(["serve", *argv]))
    for name in ("job", "command", "json", "quiet"):
        options.pop(name)
    return options


def test_the_server_listens_on_localhost_unless_told_otherwise(models):
    server, sock = serve.build_server(**parsed(str(models[1]), "--port", "0"))
    with sock:
        assert sock.getsockname()[0] == "127.0.0.1"
        assert server.config.host == "127.0.0.1"
    server, sock = serve.build_server(**parsed(str(models[1]), "--port", "0", "--host", "0.0.0.0"))
    with sock:
        assert sock.getsockname()[0] == "0.0.0.0"


def test_run_serves_over_http_until_stopped(models, monkeypatch):
    started = {}
    build = serve.build_server

    def keep(*args, **kwargs):
        started["server"], started["socket"] = build(*args, **kwargs)
        return started["server"], started["socket"]

    monkeypatch.setattr(serve, "build_server", keep)
    result = {}
    thread = threading.Thread(target=lambda: result.update(serve.run(
        models[1], port=0, top_k=2)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (started.get("server") and started["server"].started):
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    url = serve.url_of(started["socket"])
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        assert json.load(response)["status"] == "ok"
    request = urllib.request.Request(f"{url}/predict", data=models[2][0].read_bytes(),
                                     headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert len(json.load(response)["predictions"][0]["top_k"]) == 2
    started["server"].should_exit = True
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert result["url"] == url and result["images_predicted"] == 1
    assert serve.render(result).startswith(f"served {models[1]} at {url}")


def test_a_taken_port_or_a_missing_model_is_one_error_line(models, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", str(models[1]), "--port", port, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot listen on 127.0.0.1:") and "\n" not in err
    assert main(["serve", str(tmp_path / "absent"), "--port", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert main(["serve", str(models[1]), "--port", "0", "--max-images", "0", "--quiet"]) == 2
    assert "max images must be at least 1" in capsys.readouterr().err


def test_other_commands_do_not_import_fastapi_or_uvicorn():
    code = ("import sys, transferkit.cli; transferkit.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'uvicorn', "
            "'starlette'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
